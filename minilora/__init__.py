"""minilora."""
