"""aiobotocore adapters for the ports in ``reconciler.ports``. The only modules that talk to AWS."""
