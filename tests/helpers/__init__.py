"""What the tests share: tiny models and tokenizers, GGUF writers, tolerances, the lesson runner and prose
checks, the exercises' wrong answers, the docs pages' command checker."""
