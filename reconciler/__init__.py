"""Delete everything linked to a DynamoDB item when its TTL expires or its owner asks."""

__version__ = "0.1.0"
