"""stdiff."""
