"""The recordings tests' real S3 peer (moto's server over loopback), for the REST tests."""

from tests.recordings.conftest import aws_env, bucket, moto_url  # noqa: F401
