"""A window that shows an env's frames, in a process of its own that never loads TensorFlow.

On Linux, TensorFlow and a pygame window in one process crash with a segmentation fault on a
real X display, whichever is loaded first. So the process that plays renders each frame as an
array (render_mode="rgb_array") and `Window.show` sends it down a pipe to `python viewer.py`,
which draws it with pygame at the env's frame rate and answers "ok", "closed" (the user
closed the window) or "error: ..." (no window could be opened).
"""

import os
import struct
import subprocess
import sys

import numpy as np

HEADER = struct.Struct("<III")  # height, width, channels of the frame that follows


class WindowError(Exception):
    """The window could not be opened, or its process stopped."""


class WindowClosed(Exception):
    """The user closed the window."""


class Window:
    def __init__(self, title: str, fps: float, environment: dict[str, str]):
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), title, str(fps)], env=environment,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def show(self, frame: np.ndarray) -> None:
        """Draw one RGB frame; returns once it is on screen (so playback runs at the env's pace)."""
        frame = np.ascontiguousarray(frame, dtype=np.uint8)
        try:
            self.proc.stdin.write(HEADER.pack(*frame.shape) + frame.tobytes())
            self.proc.stdin.flush()
            answer = self.proc.stdout.readline().decode().strip()
        except BrokenPipeError:
            answer = ""
        if answer == "closed":
            raise WindowClosed
        if answer != "ok":
            self.close()
            raise WindowError(answer.removeprefix("error: ") or f"the window process stopped "
                                                                 f"(exit code {self.proc.returncode})")

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        self.proc.wait()


def serve(title: str, fps: float) -> None:
    """The window process: draw each frame read from stdin, answer on stdout, until stdin ends."""
    os.environ["PYGAME_HIDE_SUPPORT_PROMPT"] = "1"
    import pygame

    stdin, stdout = sys.stdin.buffer, sys.stdout
    screen, clock = None, pygame.time.Clock()
    while header := stdin.read(HEADER.size):
        height, width, channels = HEADER.unpack(header)
        pixels = stdin.read(height * width * channels)
        try:
            if screen is None:
                pygame.display.init()
                driver = pygame.display.get_driver()
                if driver in ("offscreen", "dummy") and os.environ.get("SDL_VIDEODRIVER") != driver:
                    # SDL falls back to drawing nowhere when it cannot reach the display
                    raise pygame.error(f"no display answered at DISPLAY={os.environ.get('DISPLAY', '')}")
                pygame.display.set_caption(title)
                screen = pygame.display.set_mode((width, height))
            screen.blit(pygame.image.frombuffer(pixels, (width, height), "RGB"), (0, 0))
            pygame.display.flip()
            closed = any(event.type == pygame.QUIT for event in pygame.event.get())
        except pygame.error as e:
            print(f"error: {e}", file=stdout, flush=True)
            return
        clock.tick(fps)
        print("closed" if closed else "ok", file=stdout, flush=True)
        if closed:
            return
    pygame.quit()


if __name__ == "__main__":
    serve(sys.argv[1], float(sys.argv[2]))
