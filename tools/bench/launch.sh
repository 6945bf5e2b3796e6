# Sourced by the GPU bench scripts: how a job of several ranks is launched on this host.
#
# launch_ranks RANKS LOG CMD...: runs CMD (a `troupe train` or `troupe_bench throughput` command
# line) as a job of RANKS ranks, its output in LOG (with several processes, node R's in LOG.nodeR).
#   LAUNCH=process (the default): one process drives every GPU (--job.local_ranks RANKS).
#   LAUNCH=processes: RANKS processes of one rank each (--nnodes RANKS at 127.0.0.1, and
#     CUDA_VISIBLE_DEVICES gives each its GPU), as torchrun launches the peer: the same job, to
#     tell a hazard of one process driving several GPUs apart from the rest.
# RUN_TIMEOUT (s, 900) ends a hung run: SIGQUIT first, so its log ends with every thread's stack
# (runtime/crash_report.h), then SIGKILL 20 s later.
launch_ranks() {
  local ranks=$1 out=$2
  shift 2
  local limit=(timeout -s QUIT -k 20 "${RUN_TIMEOUT:-900}")
  if [ "${LAUNCH:-process}" != processes ] || [ "$ranks" -eq 1 ]; then
    "${limit[@]}" "$@" --job.local_ranks "$ranks" > "$out" 2>&1
    return
  fi
  local port=$((29600 + RANDOM % 400)) pids=() r rc=0
  for ((r = 1; r < ranks; r++)); do
    CUDA_VISIBLE_DEVICES=$r "${limit[@]}" "$@" --job.local_ranks 1 --nnodes "$ranks" --node-rank "$r" \
      --rdzv "127.0.0.1:$port" > "$out.node$r" 2>&1 &
    pids+=($!)
  done
  CUDA_VISIBLE_DEVICES=0 "${limit[@]}" "$@" --job.local_ranks 1 --nnodes "$ranks" --node-rank 0 \
    --rdzv "127.0.0.1:$port" > "$out" 2>&1 || rc=$?
  for pid in "${pids[@]}"; do wait "$pid" || rc=$?; done
  return $rc
}
