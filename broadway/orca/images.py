"""How a built grader image is named on every grader: the one tag scheme API and graders share."""

from __future__ import annotations

import re

# A build of the Dockerfile whose sha256 is S is tagged `broadway-image:S` on the builder and on
# every grader that loads it (grader/image_builder.py, grader/image_cache.py).
BUILT_IMAGE_REPOSITORY = "broadway-image"
SHA = re.compile(r"[0-9a-f]{64}")


def built_image_tag(sha: str) -> str:
    return f"{BUILT_IMAGE_REPOSITORY}:{sha}"
