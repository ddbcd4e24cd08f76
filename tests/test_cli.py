from mia_bench.__main__ import normalize_overrides


def test_plus_spelling_is_accepted_for_default_groups():
    argv = ["+defense=none", "+dataset=digits", "+analysis=dynamics", "+extra=1", "++seed=3", "model=mlp", "-m"]
    assert normalize_overrides(argv) == [
        "defense=none",
        "dataset=digits",
        "analysis=dynamics",
        "+extra=1",  # not a group in the defaults list: Hydra needs the + to add a new key
        "++seed=3",
        "model=mlp",
        "-m",
    ]
