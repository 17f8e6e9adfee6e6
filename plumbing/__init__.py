"""Plumbing: what every run needs that is not the algorithm, each file one job. A learner can skip
this folder; the scripts at the top call into it in one line each.

settings.py     the flags every script shares, the checks of their values (no TensorFlow: bench.py and see.py use it)
startup.py      loading TensorFlow the same way on every CPU, without its start-up noise
envs.py         making an env, playing episodes in a window, to mp4s or a GIF
viewer.py       the window, drawn in a process of its own
bookkeeping.py  a run's folder, counters, checkpoint file, evaluations record, signals, summary.json, exit code
dqn_run.py      a DQN training's plumbing as one object: logger, signals, progress bar, snapshots, keep-best, the end
keras_files.py  .keras snapshots written crash-safely and read back with a one-line error
atomic.py       crash-safe writes: a file is its old complete version or its new one
serving.py      a trained Q-network exported (SavedModel, ONNX, LiteRT, .h5) and played from ONNX without TensorFlow
system.py       what differs between Linux, macOS and Windows: cores, peak memory, flushing a folder, child processes
"""
