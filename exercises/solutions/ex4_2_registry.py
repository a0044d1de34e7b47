"""Exercise 4.2 — reference solution."""
from minilora.models import CATALOGUE, from_catalogue, search_catalogue

GROUPS = ("embedding", "attention", "mlp", "norms", "lm_head")


def _meta_model(name: str):
    return from_catalogue(name, device="meta")  # shapes only, no memory


def parameter_count(name: str) -> int:
    return _meta_model(name).num_parameters()


def _group(param_name: str) -> str:
    if param_name.startswith("model.embed_tokens."):
        return "embedding"
    if param_name.startswith("lm_head."):
        return "lm_head"
    if ".self_attn." in param_name:
        return "attention"
    if ".mlp." in param_name:
        return "mlp"
    if "norm" in param_name:
        return "norms"
    raise ValueError(f"parameter {param_name!r} belongs to no group of {GROUPS}")


def parameter_breakdown(name: str) -> dict[str, int]:
    counts = dict.fromkeys(GROUPS, 0)
    for param_name, p in _meta_model(name).named_parameters():  # yields a shared (tied) tensor only once
        counts[_group(param_name)] += p.numel()
    return counts


def catalogue_table(query: str = "") -> list[dict]:
    rows = []
    for name in search_catalogue(query):
        repo, config = CATALOGUE[name]
        rows.append({"name": name, "repo": repo, "model_type": config.model_type, "params": parameter_count(name)})
    return sorted(rows, key=lambda row: row["params"])
