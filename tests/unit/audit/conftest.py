"""The checker's tests share the topics held in memory (``test_checker_replay.Topics``) and its fixture."""

from tests.unit.audit.test_checker_replay import topics  # noqa: F401 - the fixture, for every module here
