"""The fxprune test suite; shared test code lives in ``tests.helpers``, ``tests.small_task`` and
``tests.latency_helpers``."""
