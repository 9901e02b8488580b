"""Training loops for the contrastive model and the latent diffusion model, run through Accelerate."""
