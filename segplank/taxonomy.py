"""Taxon names → a hierarchy, the group an ecologist reports, and living or not.

Two naming habits meet here. EcoTaxa gives a ``>`` path from the root
(``living>Eukaryota>…>Copepoda``, ``not-living>detritus``) and a display name that may carry
its parent (``Copepoda<Maxillopoda``). Older libraries such as the NDSB set encode the
hierarchy by prefix (``copepod_calanoid_large`` is a ``copepod_calanoid`` is a ``copepod``).
Both become a :class:`Taxon`: the name as spelt in the library, its path (root first), its
reporting group and whether it is living matter. The groups are the ones plankton
ecologists publish concentrations for; anything living that fits none is ``other_living``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

NON_LIVING_WORDS = frozenset({
    "not-living", "detritus", "artefact", "artefacts", "artifact", "artifacts", "bubble", "bubbles",
    "marine_snow", "marine snow", "snow", "fiber", "fibre", "fibers", "fibres", "badfocus", "plastic",
    "crystal", "reflection", "fecal", "faecal", "feces", "pellet", "smudges", "blobs", "sticks"
})

# (group, words that put a taxon in it), tried in order against every part of its name and
# path: the first group one of whose words appears wins. Non-living groups come first so
# that "fecal_pellet" of a copepod is still a pellet.
GROUPS: tuple[tuple[str, bool, tuple[str, ...]], ...] = (
    ("fecal_pellets", False, ("fecal", "faecal", "feces", "pellet")),
    ("artefacts", False, ("artefact", "artefacts", "artifact", "artifacts", "bubble", "bubbles", "fiber", "fibre",
                          "badfocus", "plastic", "crystal", "reflection", "sticks")),
    ("marine_snow", False, ("marine_snow", "snow", "smudges", "blobs", "aggregate", "aggregates")),
    ("detritus", False, ("detritus", "not-living")),
    ("copepods", True, ("copepod", "copepoda", "calanoida", "cyclopoida", "harpacticoida", "poecilostomatoida")),
    ("chaetognaths", True, ("chaetognath", "chaetognatha", "sagitta")),
    ("appendicularians", True, ("appendicularian", "appendicularia", "oikopleura", "fritillaria")),
    ("siphonophores", True, ("siphonophore", "siphonophorae")),
    ("ctenophores", True, ("ctenophore", "ctenophora")),
    ("hydromedusae", True, ("hydromedusae", "hydrozoa", "medusa", "medusae", "ephyra", "jellies", "scyphozoa",
                            "narcomedusae", "trachymedusae", "leptothecata", "anthoathecata")),
    ("radiolarians_acantharians", True, ("radiolarian", "radiolaria", "acantharia", "acantharea", "polycystinea",
                                         "collodaria", "phaeodaria")),
    ("diatoms", True, ("diatom", "bacillariophyta", "bacillariophyceae")),
    ("trichodesmium", True, ("trichodesmium",)),
    ("protists", True, ("protist", "protista", "dinoflagellata", "noctiluca", "foraminifera", "ciliophora")),
    ("tunicates", True, ("tunicate", "tunicata", "thaliacea", "salp", "salpida", "doliolid", "doliolida",
                         "pyrosoma", "chordate")),
    ("fish_larvae", True, ("fish", "actinopterygii", "teleostei", "larvae_fish")),
    ("echinoderm_larvae", True, ("echinoderm", "echinodermata", "echinopluteus", "pluteus", "bipinnaria")),
    ("crustaceans", True, ("crustacean", "crustacea", "amphipod", "amphipods", "amphipoda", "decapod", "decapods",
                           "decapoda", "euphausiid", "euphausiids", "euphausiacea", "shrimp", "shrimp-like",
                           "stomatopod", "mysida", "ostracoda", "cladocera", "zoea", "nauplii")),
)
OTHER_LIVING = "other_living"


@dataclass(frozen=True)
class Taxon:
    """One class of a library: its own name, its path from the root, its group, living or not."""

    name: str  # as spelt in the library (folder name or EcoTaxa category)
    path: tuple[str, ...]  # root first, ``name``'s own level last
    group: str  # the reporting group (GROUPS), or OTHER_LIVING
    living: bool

    def level(self, depth: int) -> str:
        """The name at ``depth`` of the path (0: root), or the finest one when the path is shorter."""
        return self.path[min(depth, len(self.path) - 1)]


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[\s<>_/|,;:()]+", text.strip().lower()) if w]


def is_non_living(name: str, hierarchy: str = "") -> bool:
    """Whether a category names non-living matter: EcoTaxa's ``not-living`` branch when the
    hierarchy is given, else a word of the name (``detritus``, ``artefact``, ``bubble``…)."""
    if hierarchy.strip():
        return hierarchy.strip().lower().startswith("not-living")
    return any(w in NON_LIVING_WORDS for w in _words(name)) or "marine snow" in name.lower()


def group_of(parts: tuple[str, ...] | list[str], living: bool) -> str:
    """The reporting group of a taxon from all the names on its path."""
    words = {w for p in parts for w in _words(p)}
    words |= {p.strip().lower() for p in parts}
    for group, group_living, keys in GROUPS:
        if group_living == living and words & set(keys):
            return group
    return OTHER_LIVING if living else "detritus"


def prefix_path(name: str, known: set[str] | None = None) -> tuple[str, ...]:
    """NDSB-style hierarchy by prefix: ``copepod_calanoid_large`` → (``copepod``,
    ``copepod_calanoid``, ``copepod_calanoid_large``).

    With ``known`` (all the library's class names) a prefix is a level only when it is a node
    of the library's tree: a class of its own, or shared by two classes or more
    (``fish_larvae`` above six classes; not ``fish_larvae_deep`` of ``fish_larvae_deep_body``).
    The root word is always a level.
    """
    tokens = name.split("_")
    path = ["_".join(tokens[:k]) for k in range(1, len(tokens) + 1)]
    if known is not None:
        def node(p: str) -> bool:
            return p in known or sum(1 for c in known if c == p or c.startswith(p + "_")) >= 2

        path = [p for k, p in enumerate(path) if k == 0 or p == name or node(p)]
    return tuple(dict.fromkeys(path))


def ecotaxa_path(category: str, hierarchy: str) -> tuple[str, ...]:
    """EcoTaxa's ``>`` path (root first), ending with the category as spelt in the export."""
    parts = [p.strip() for p in hierarchy.split(">") if p.strip()] if hierarchy.strip() else []
    if not parts:
        # "Copepoda<Maxillopoda": the display name names its parent after "<"
        names = [p.strip() for p in category.split("<") if p.strip()]
        parts = list(reversed(names[1:]))
    if not parts or parts[-1] != category:
        parts.append(category)
    return tuple(dict.fromkeys(parts))


def taxon_from_prefix(name: str, known: set[str] | None = None) -> Taxon:
    path = prefix_path(name, known)
    living = not is_non_living(name)
    return Taxon(name, path, group_of(path, living), living)


def taxon_from_ecotaxa(category: str, hierarchy: str = "") -> Taxon:
    path = ecotaxa_path(category, hierarchy)
    living = not is_non_living(category, hierarchy)
    return Taxon(category, path, group_of(path, living), living)


__all__ = ["GROUPS", "NON_LIVING_WORDS", "OTHER_LIVING", "Taxon", "ecotaxa_path", "group_of", "is_non_living",
           "prefix_path", "taxon_from_ecotaxa", "taxon_from_prefix"]
