"""Exercise 4.2 — model registry exploration: search the catalogue and size up every model without downloading it.

Read lessons/week2_model_family.py (the registry and the catalogue) first. Replace each
`raise NotImplementedError(...)` with your code, then run `pytest -m ex4_2` until it is green.

Unsloth keeps a registry of model names (unsloth/registry/); minilora keeps a catalogue of well-known configurations
(`minilora.models.CATALOGUE`, `search_catalogue`, `catalogue_config`, `from_catalogue`). A model built on the meta
device (`from_catalogue(name, device="meta")`) has every parameter's shape but allocates no memory, so even an
8-billion-parameter model can be counted on a laptop in a fraction of a second.
"""

GROUPS = ("embedding", "attention", "mlp", "norms", "lm_head")


def parameter_count(name: str) -> int:
    """Total parameters of the catalogue model `name`, counted on the meta device (a tied lm_head counts once)."""
    raise NotImplementedError("Exercise 4.2: parameter_count — see lessons/week2_model_family.py")


def parameter_breakdown(name: str) -> dict[str, int]:
    """Parameters of the catalogue model `name` per group, keyed by GROUPS.

    embedding: model.embed_tokens; attention: every self_attn parameter (q, k, v, o and their biases);
    mlp: every mlp parameter (gate, up, down); norms: every RMSNorm weight (two per layer and the final one);
    lm_head: the output matrix, or 0 when it is tied to the embedding (it is the same tensor, counted once).
    The values add up to parameter_count(name).
    """
    raise NotImplementedError("Exercise 4.2: parameter_breakdown — see lessons/week2_model_family.py")


def catalogue_table(query: str = "") -> list[dict]:
    """One row per catalogue model matching `query` (as search_catalogue matches), smallest model first.

    Each row is a dict with keys "name" (catalogue short name), "repo" (its Hugging Face repo id), "model_type"
    and "params" (parameter_count). An empty query lists the whole catalogue.
    """
    raise NotImplementedError("Exercise 4.2: catalogue_table — see lessons/week2_model_family.py")
