"""Plumbing: what every run needs that is not the algorithm, each file one job. A learner can skip
this folder; the scripts at the top call into it in one line each.

settings.py     every flag, its help and the presets per env (no TensorFlow: bench.py and see.py use it)
startup.py      loading TensorFlow the same way on every CPU, without its start-up noise
envs.py         making envs, Atari games stepped together, playing episodes in a window, to mp4s or a GIF
viewer.py       the window, drawn in a process of its own
bookkeeping.py  a run's folder, counters, checkpoint file, evaluations record, Ctrl-C, summary.json, exit code
dqn_files.py    what run.py's checkpoint holds, its snapshots and its end-of-run files
keras_files.py  .keras snapshots written crash-safely and read back with a one-line error
atomic.py       crash-safe writes: a file is its old complete version or its new one
serving.py      a trained Q-network exported (SavedModel, ONNX, LiteRT, .h5) and played from ONNX without TensorFlow
system.py       what differs between Linux, macOS and Windows: cores, peak memory, flushing a folder, child processes
"""
