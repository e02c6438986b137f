"""Reading an image from disk: the file, its boot modules, and its programs (the I/O half of capabilities.image)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from capabilities.image import MAX_IMAGE_BYTES, Image, ImageError, Problem, parse_image

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MAX_MODULE = 16 << 20


def program_exists(program: str) -> bool:
    base = PROJECT_ROOT / "tasks" / Path(*program.split("."))
    return base.with_suffix(".py").is_file() or (base / "__main__.py").is_file()


@dataclasses.dataclass(frozen=True)
class LoadedImage:
    image: Image
    path: Path
    modules: tuple[tuple[str, bytes], ...]  # what bootstrap copies into memory; "image" first
    missing: tuple[Problem, ...] = ()  # modules that could not be read (only with missing_ok)


def load_image(path: str | Path, *, missing_ok: bool = False) -> LoadedImage:
    """Validate the image file and read its modules; ``ImageError`` names file, line and field.

    ``missing_ok``: an unreadable module is listed in ``missing`` instead (``l4emu check`` on a fresh
    clone, where images/wvds.yaml's EST trust anchor is made by the CA at first boot)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:  # bounded: a FIFO or /dev/zero must not exhaust memory
            raw = f.read(MAX_IMAGE_BYTES + 1)
        if len(raw) > MAX_IMAGE_BYTES:
            raise ImageError([Problem(str(path), 1, 1, "<file>", f"the image is larger than {MAX_IMAGE_BYTES} "
                                                                 f"bytes; at most {MAX_IMAGE_BYTES} are accepted")])
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ImageError([Problem(str(path), 1, 1, "<file>", f"cannot read the image: {exc}")]) from None
    image = parse_image(text, str(path), program_exists)
    modules: list[tuple[str, bytes]] = [("image", text.encode())]
    problems = []
    for mod in image.modules:
        file = (path.parent / mod.path)
        try:
            if file.stat().st_size > MAX_MODULE:
                raise OSError(f"larger than {MAX_MODULE >> 20} MiB")
            modules.append((mod.name, file.read_bytes()))
        except OSError as exc:
            problems.append(Problem(str(path), mod.line, 1, f"modules.{mod.name}",
                                    f"cannot read boot module {str(file)!r}: {exc.strerror or exc}"))
    if problems and not missing_ok:
        raise ImageError(problems)
    return LoadedImage(image, path, tuple(modules), tuple(problems))
