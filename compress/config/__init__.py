"""Pipeline configuration: schema, YAML loading with line numbers, error formatting."""
