"""Deployment and local-infrastructure code: the Runware emulator and the local stack."""
