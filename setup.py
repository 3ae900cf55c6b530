from setuptools import find_packages, setup

setup(
    name="broadway",
    version="0.1.0",
    description="Broadway: a distributed autograder (API server, grader daemon, start_run)",
    python_requires=">=3.11",
    packages=find_packages(include=["broadway", "broadway.*", "grader", "grader.*", "utils", "utils.*"]),
    package_data={"broadway": ["schemas/*.json", "openapi.yaml", "templates/*.html", "static/*"]},
    install_requires=[
        "tornado>=6.4,<7",
        "pycurl>=7.45.3,<8",
        "pymongo>=4.13,<5",
        "nx-27017>=0.8,<0.9",
        "docker>=7,<8",
        "jsonschema>=4.20,<5",
        "rich>=13",
        "prometheus-client>=0.20,<1",
        # JWT bearer tokens; [crypto] for RS256/ES256 public keys.
        "PyJWT[crypto]>=2.10,<3",
    ],
    entry_points={
        "console_scripts": [
            "broadway=broadway.__main__:main",
            "broadway-grader=grader.__main__:main",
            "broadway-start-run=utils.start_run:main",
            "broadway-submit=utils.submit:main",
            "broadway-admin=utils.admin:main",
        ]
    },
)
