"""Test-wide setup.

XLA reads its flags once, when the backend first initialises, so the 8 simulated CPU devices must
be requested before anything imports jax. pytest imports conftest.py before the test modules.
"""
import os
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
# Tests never talk to the W&B service.
os.environ.setdefault("WANDB_MODE", "disabled")
# One persistent XLA compilation cache per test session: many tests (and the trainer processes
# they start) compile the same tiny programs; later compiles load the executable instead. Fresh
# per session, so a stale entry can never leak in from an earlier checkout.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="sw_zoo_tests_xla_cache_"))
