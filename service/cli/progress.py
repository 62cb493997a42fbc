"""Progress of a restore run on stderr: one bar over images, one over the current image's passes.

Bars are drawn only for a person watching (stderr is a terminal and ``--quiet`` is off); logs
and pipes get the per-image lines alone. Those lines go to stdout through tqdm, which clears
the bars first so the two never interleave.
"""

from __future__ import annotations

import sys
from types import TracebackType

from tqdm import tqdm


def bars_wanted(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


class Progress:
    def __init__(self, images: int, *, enabled: bool, echo: bool = True) -> None:
        self.enabled = enabled
        self.echo = echo
        self.images = tqdm(total=images, unit="image", desc="images", position=0,
                           file=sys.stderr, disable=not enabled, dynamic_ncols=True)
        self.passes: tqdm | None = None

    def start_image(self, name: str, passes: int | None) -> None:
        """Begin an image; ``passes`` is None when the work is done elsewhere (a server)."""
        self.images.set_postfix_str(name, refresh=False)
        if passes is not None and self.enabled:
            if self.passes is None:
                self.passes = tqdm(total=passes, unit="pass", desc="passes", position=1,
                                   file=sys.stderr, leave=False, dynamic_ncols=True)
            else:
                self.passes.reset(total=passes)

    def pass_done(self, *_: object) -> None:
        if self.passes is not None:
            self.passes.update(1)

    def image_done(self, line: str | None = None) -> None:
        if line is not None and self.echo:
            tqdm.write(line, file=sys.stdout)
        self.images.update(1)

    def message(self, line: str) -> None:
        """A line for stderr (a skipped image), printed even when quiet."""
        tqdm.write(line, file=sys.stderr)

    def close(self) -> None:
        if self.passes is not None:
            self.passes.close()
        self.images.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
