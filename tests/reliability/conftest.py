from tests.docker_fixtures import busybox_image, docker_client  # noqa: F401 - fixtures
from tests.grader.conftest import start_grader  # noqa: F401 - fixture
