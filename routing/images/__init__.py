"""The images layer: validation and sizing, edit forms and references, conversion, fan-out,
and the shaping and hosting of results."""
