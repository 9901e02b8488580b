# Shared by the run scripts: `step ARGS...` runs `stdiff ARGS...` and appends the command and its wall time to
# $log. Source it after setting log.
step() {
  local start=$SECONDS
  echo "+ stdiff $*" | tee -a "$log"
  stdiff "$@"
  echo "  $((SECONDS - start)) s" | tee -a "$log"
}
