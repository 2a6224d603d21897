"""The image endpoints' domain logic: validation, the generation flow, hosting of results."""
