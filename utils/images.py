"""Build the busybox-based images used by the tests, the benchmark and the demo.

There is no image registry on these machines, so every image is built FROM scratch with
Debian's static busybox copied in. The docker SDK's build speaks the classic builder API,
which is what `DOCKER_BUILDKIT=0` selects on the command line.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import docker
import docker.errors

BUSYBOX = Path("/bin/busybox")

BASE_DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
"""


class ImageBuildError(Exception):
    pass


def build_image(client: docker.DockerClient, tag: str, context: Path | None = None) -> str:
    """Build `tag` from `context` (a directory with a Dockerfile that copies `busybox`), or from
    the bare busybox Dockerfile when no context is given. Returns the image id."""
    if not BUSYBOX.exists():
        raise ImageBuildError(f"{BUSYBOX} is missing: install Debian's busybox-static (apt-get install busybox-static)")
    with tempfile.TemporaryDirectory(prefix="broadway-build-") as tmp:
        build_dir = Path(tmp) / "context"
        if context is not None:
            shutil.copytree(context, build_dir)
        else:
            build_dir.mkdir()
            (build_dir / "Dockerfile").write_text(BASE_DOCKERFILE)
        shutil.copy2(BUSYBOX, build_dir / "busybox")
        try:
            image, _ = client.images.build(path=str(build_dir), tag=tag, rm=True, forcerm=True)
        except docker.errors.BuildError as exc:
            lines = [str(step.get("stream") or step.get("error") or "").strip() for step in exc.build_log]
            raise ImageBuildError(f"building {tag} failed: {exc.msg}\n" + "\n".join(filter(None, lines))) from None
    return str(image.id)
