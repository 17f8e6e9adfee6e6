"""What differs between Linux, macOS and Windows, in one place: the cores this process may use, its
peak memory, whether the CPU computes bfloat16 natively (or oneDNN can at all), making a rename
survive a power cut, a child process that ends with its parent, and the tests' self-stop. Each takes
the platform as an argument (default: this one), so that the tests run the other systems' branches
on Linux.
"""

import ctypes
import os
import signal
import sys
from collections.abc import Callable


def usable_cores() -> int:
    """The cores this process may run on: a container's or `taskset`'s limit where the system tells
    it (Linux), else every core of the machine."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def peak_memory_mib(platform: str = sys.platform) -> float:
    """The most memory this process has held in RAM so far (its peak resident set), in MiB."""
    if platform == "win32":  # no getrusage on Windows: the peak working set, in bytes
        import psutil

        return psutil.Process().memory_info().peak_wset / 2**20
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if platform == "darwin" else peak / 2**10  # macOS counts bytes, Linux KiB


# oneDNN's instruction-set caps (ONEDNN_MAX_CPU_ISA) that still include bfloat16 instructions.
BFLOAT16_ISAS = {"AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16", "AVX10_1_512",
                 "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "ALL", "DEFAULT"}


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The instruction-set flags of this CPU as Linux lists them (avx2, avx512f, avx512_bf16, amx_tile, ...);
    empty where there is no /proc/cpuinfo (macOS, Windows)."""
    try:
        with open(cpuinfo) as f:
            return set(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        return set()


def cpu_kind(flags: set[str] | None = None) -> str:
    """Which of the CPU kinds the docs give numbers for this one is (from cpu_flags() unless given)."""
    flags = cpu_flags() if flags is None else flags
    for flag, kind in [("amx_tile", "AVX-512 with AMX"), ("avx512_bf16", "AVX-512 with AVX512_BF16, no AMX"),
                       ("avx512f", "AVX-512 without AVX512_BF16"), ("avx2", "AVX2 only")]:
        if flag in flags:
            return kind
    return "unknown"


def onednn_on(environ: dict) -> bool:
    """Whether TensorFlow runs oneDNN's kernels (TF_ENABLE_ONEDNN_OPTS, which plumbing/startup.py sets before
    TensorFlow loads)."""
    return environ.get("TF_ENABLE_ONEDNN_OPTS", "1").lower() not in ("0", "false")


def native_bfloat16(environ: dict, platform: str = sys.platform, cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether TensorFlow's oneDNN kernels can compute bfloat16 in hardware here: a CPU with AMX or AVX512_BF16
    (known on Linux only: elsewhere False), oneDNN on, and no cap below those instructions. Anywhere else
    TensorFlow emulates bfloat16, several times slower than float32."""
    if not platform.startswith("linux") or not onednn_on(environ):
        return False
    if environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper() not in BFLOAT16_ISAS:
        return False
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags(cpuinfo))


def bfloat16_convolutions_fail(environ: dict, platform: str = sys.platform, cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether a bfloat16 convolution would stop TensorFlow here: oneDNN on, and an x86-64 CPU without AVX-512
    or a cap below it (ONEDNN_MAX_CPU_ISA=AVX2), where oneDNN has no bfloat16 convolution. Known on Linux only."""
    flags, cap = cpu_flags(cpuinfo), environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    below_avx512 = cap in ("SSE41", "AVX") or cap.startswith("AVX2") or "avx512f" not in flags
    return platform.startswith("linux") and "sse2" in flags and onednn_on(environ) and below_avx512


def flush_folder(folder: str | os.PathLike, platform: str = sys.platform) -> None:
    """Make the renames done in `folder` survive a power cut (fsync of the folder itself). Windows
    cannot open a folder as a file: there the rename is as durable as its file system's journal
    makes it."""
    if platform == "win32":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def has_display(environ: dict, platform: str = sys.platform) -> bool:
    """Whether a window can open: Linux needs an X or Wayland server (or SDL told where to draw);
    macOS and Windows always have a screen."""
    if not platform.startswith("linux"):
        return True
    return any(environ.get(name) for name in ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER"))


def _term_when_parent_dies() -> None:
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def ending_with_parent(platform: str = sys.platform) -> dict[str, Callable]:
    """subprocess.run's arguments for a child that gets SIGTERM when the process that started it dies
    (Ray cancelling a trial, `kill`), so that it saves a snapshot and --resume can continue it. Only
    Linux can ask for that; on macOS and Windows a child outlives a killed parent, while Ctrl-C in
    the terminal still reaches both. Not SIGINT: the signal comes again each time a thread the child
    is handed to ends, and a second SIGINT kills."""
    return {"preexec_fn": _term_when_parent_dies} if platform.startswith("linux") else {}


def stop_self(platform: str = sys.platform) -> None:
    """Tests only: stop this process (SIGSTOP) for a test to kill it at a chosen moment."""
    if platform == "win32":  # the one-line error of plumbing/settings.py's fail, which imports this file
        print(f"{os.path.basename(sys.argv[0])}: error: DQN_PAUSE_BEFORE_RENAME stops the process with SIGSTOP, "
              "which Windows does not have; unset it (the crash tests run on Linux and macOS)", file=sys.stderr)
        sys.exit(2)
    os.kill(os.getpid(), signal.SIGSTOP)
