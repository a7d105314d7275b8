"""Test-wide setup.

XLA reads its flags once, when the backend first initialises, so the 8 simulated CPU devices must
be requested before anything imports jax. pytest imports conftest.py before the test modules.
"""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
# Tests never talk to the W&B service.
os.environ.setdefault("WANDB_MODE", "disabled")
