"""Deploy a model to a device or a fleet: self-test on the device, atomic switch, rollback."""

from .core import HostResult, Target, deploy, rollback

__all__ = ["HostResult", "Target", "deploy", "rollback"]
