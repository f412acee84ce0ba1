"""Domain core of imagine-pipeline: settings, catalog, schemas, adapters and use cases."""
