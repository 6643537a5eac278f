"""A seeded demo catalog in which item text carries the taste signal.

Why synthetic data at all: the demo and the tests need data of any size, with
no download, where *learning is visible*: a model that reads item text should
beat popularity, and one that reads noise should not. So the generator has a
ground truth that only the text reveals:

* Items belong to a primary (and sometimes a secondary) **topic**. Their
  title, genres, tags and description are drawn from that topic's vocabulary
  (real English words, so a pretrained encoder has a head start) mixed with
  shared noise words. Popularity is Zipf-like and independent of topic.
* Users have a latent **taste** (a sparse Dirichlet mix over topics) that
  drifts from an early to a late mix over their history, so their most recent
  interactions are predictable from their history plus the items' text.
  Features are correlated with taste (``country`` with the dominant topic,
  ``age_band`` weakly) plus a numeric ``activity`` that scales their volume.
* Interactions: topic from the user's current taste, then an item of that
  topic by popularity (5% exploration by global popularity), without repeats,
  at increasing timestamps.

Memory is bounded at any size: users and interactions are generated and
written in chunks of users (``pyarrow.parquet.ParquetWriter``, one row group
per chunk), so only one chunk's interactions exist at a time. Each chunk has
its own seed derived from ``(seed, chunk)``, so the output is identical run to
run.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recbatch.config import GenerateConfig
from recbatch.schemas import TIMESTAMP_TYPE, id_arrow_type

# (genre, topic words): each topic's vocabulary. Topics beyond this list blend two themes.
THEMES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Space", ("galaxy", "orbit", "astronaut", "rocket", "nebula", "planet", "starship", "comet", "asteroid", "cosmos", "satellite", "lunar", "martian", "alien")),
    ("Cooking", ("kitchen", "recipe", "chef", "pastry", "spice", "bakery", "noodle", "feast", "garlic", "soup", "dessert", "grill", "harvest", "flavor")),
    ("Romance", ("love", "wedding", "kiss", "heart", "valentine", "romance", "bride", "sweetheart", "passion", "honeymoon", "courtship", "darling", "embrace", "date")),
    ("Crime", ("detective", "murder", "heist", "gangster", "police", "robbery", "alibi", "suspect", "mafia", "smuggler", "verdict", "witness", "prison", "clue")),
    ("Sports", ("football", "stadium", "champion", "coach", "tournament", "goal", "athlete", "marathon", "league", "referee", "trophy", "boxing", "tennis", "medal")),
    ("Music", ("guitar", "concert", "melody", "band", "piano", "singer", "album", "rhythm", "orchestra", "jazz", "drummer", "opera", "song", "violin")),
    ("History", ("empire", "castle", "king", "medieval", "dynasty", "pharaoh", "knight", "revolution", "ancient", "throne", "roman", "crusade", "queen", "monarch")),
    ("Nature", ("forest", "river", "wildlife", "mountain", "ocean", "jungle", "eagle", "glacier", "meadow", "wolf", "coral", "volcano", "desert", "whale")),
    ("Technology", ("robot", "computer", "software", "hacker", "algorithm", "circuit", "laptop", "network", "startup", "cyber", "gadget", "code", "android", "silicon")),
    ("Horror", ("ghost", "vampire", "zombie", "haunted", "curse", "demon", "nightmare", "graveyard", "witch", "monster", "scream", "skeleton", "blood", "shadow")),
    ("Comedy", ("joke", "prank", "clown", "laugh", "sitcom", "parody", "goofy", "blunder", "slapstick", "comedian", "silly", "hilarious", "mischief", "spoof")),
    ("Fantasy", ("dragon", "wizard", "elf", "spell", "kingdom", "sorcerer", "quest", "unicorn", "potion", "enchanted", "dwarf", "magic", "fairy", "troll")),
    ("War", ("soldier", "battle", "army", "tank", "general", "trench", "navy", "bomber", "invasion", "regiment", "sniper", "frontline", "veteran", "artillery")),
    ("Travel", ("journey", "passport", "voyage", "island", "backpack", "airport", "cruise", "safari", "tourist", "hotel", "map", "expedition", "road", "train")),
    ("Medicine", ("doctor", "hospital", "nurse", "surgeon", "virus", "patient", "clinic", "vaccine", "surgery", "diagnosis", "ambulance", "medicine", "cure", "pandemic")),
    ("Finance", ("bank", "stock", "money", "investor", "market", "fortune", "broker", "wealth", "dollar", "tycoon", "trade", "profit", "merger", "billionaire")),
    ("Western", ("cowboy", "sheriff", "saloon", "ranch", "outlaw", "horse", "frontier", "desperado", "lasso", "canyon", "stagecoach", "bandit", "prairie", "gunslinger")),
    ("Family", ("puppy", "grandma", "birthday", "kids", "holiday", "toy", "school", "teddy", "picnic", "siblings", "babysitter", "playground", "kitten", "cartoon")),
    ("Mystery", ("secret", "puzzle", "riddle", "mansion", "disappearance", "cipher", "inheritance", "stranger", "letter", "locked", "enigma", "portrait", "key", "diary")),
    ("Politics", ("election", "senator", "president", "campaign", "congress", "scandal", "diplomat", "parliament", "vote", "minister", "embassy", "lobbyist", "treaty", "rally")),
)  # fmt: skip

NOISE_WORDS: tuple[str, ...] = (
    "the", "last", "great", "little", "new", "old", "return", "story", "night", "day", "life", "world",
    "time", "home", "city", "man", "woman", "light", "dark", "golden", "silent", "lost", "second", "final",
    "summer", "winter", "blue", "red", "road", "house", "legend", "dream", "song", "game", "friend", "heart",
)  # fmt: skip

COUNTRIES = ("US", "GB", "DE", "FR", "BR", "IN", "JP", "MX", "ES", "IT", "CA", "AU")
AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55+")
START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)  # events span START .. START + SPAN_DAYS
SPAN_DAYS = 540
UNAVAILABLE_FRACTION = 0.03
EXPLORATION = 0.05  # share of interactions drawn by global popularity, ignoring taste
TASTE_CONCENTRATION = 0.15  # Dirichlet alpha: small -> each user likes few topics
DRIFT = 0.3  # how much of the late taste is new
ZIPF_EXPONENT = 0.9
ROWS_PER_CHUNK_TOPIC = 8_000_000  # bounds the (rows x topics) taste matrix of one chunk


@dataclass(frozen=True)
class Catalog:
    """What user sampling needs to know about items (arrays of length n_items or n_topics)."""

    popularity: np.ndarray  # (n_items,) float64, sums to 1
    topic_items: list[np.ndarray]  # per topic: item indices
    topic_cdf: list[np.ndarray]  # per topic: cumulative popularity of those items
    global_cdf: np.ndarray  # (n_items,)
    has_items: np.ndarray  # (n_topics,) bool


def topic_vocabulary(topic: int) -> tuple[str, tuple[str, ...]]:
    """Genre name and words of a topic; topics past the theme list blend two themes."""
    n = len(THEMES)
    if topic < n:
        return THEMES[topic]
    (g1, w1), (g2, w2) = THEMES[topic % n], THEMES[(topic // n + topic) % n]
    if g1 == g2:
        (g2, w2) = THEMES[(topic + 1) % n]
    return f"{g1} {g2} {topic // n}", w1[: len(w1) // 2] + w2[len(w2) // 2 :]


def format_ids(prefix: str, index: np.ndarray, width: int, id_type: str) -> pa.Array:
    """int64 ids, or zero-padded text ids like ``u000123`` (``prefix`` + index)."""
    if id_type == "int":
        return pa.array(index.astype(np.int64), pa.int64())
    return pa.array([f"{prefix}{i:0{width}d}" for i in index.tolist()], pa.string())


def _id_width(n: int) -> int:
    return max(6, len(str(n - 1)))


# --------------------------------------------------------------------------- items


def make_items(cfg: GenerateConfig, rng: np.random.Generator) -> tuple[pa.Table, Catalog]:
    n, n_topics = cfg.items, cfg.topics
    primary = rng.integers(0, n_topics, size=n)
    primary[: min(n, n_topics)] = np.arange(min(n, n_topics))  # every topic gets an item when possible
    secondary = np.where(rng.random(n) < 0.35, (primary + rng.integers(1, max(n_topics, 2), size=n)) % n_topics, -1)
    secondary[secondary == primary] = -1
    rank = rng.permutation(n)
    popularity = 1.0 / (rank + 1.0) ** ZIPF_EXPONENT
    popularity /= popularity.sum()

    vocab = [topic_vocabulary(t) for t in range(n_topics)]
    titles, genres, tags, descriptions = [], [], [], []
    word_draws = rng.random((n, 8))
    noise_draws = rng.integers(0, len(NOISE_WORDS), size=(n, 3))
    for i in range(n):
        genre, words = vocab[primary[i]]
        second = vocab[secondary[i]] if secondary[i] >= 0 else None
        w = [words[int(u * len(words))] for u in word_draws[i]]
        noise = [NOISE_WORDS[j] for j in noise_draws[i]]
        title_words = [noise[0], w[0], w[1]] if word_draws[i, 7] < 0.5 else [w[0], noise[0], w[1]]
        titles.append(" ".join(title_words).title())
        genres.append(genre if second is None else f"{genre}, {second[0]}")
        extra = second[1][int(word_draws[i, 6] * len(second[1]))] if second else w[4]
        tags.append(", ".join(dict.fromkeys([w[2], w[3], extra])))
        descriptions.append(f"A {noise[1]} {noise[2]} story of {w[5]}, {w[6]} and {extra}.")

    item_index = np.arange(n)
    table = pa.table(
        {
            "item_id": format_ids("i", item_index, _id_width(n), cfg.id_type),
            "title": pa.array(titles, pa.string()),
            "genres": pa.array(genres, pa.string()),
            "tags": pa.array(tags, pa.string()),
            "description": pa.array(descriptions, pa.string()),
            "available": pa.array(rng.random(n) >= UNAVAILABLE_FRACTION, pa.bool_()),
            "year": pa.array(rng.integers(1970, 2025, size=n), pa.int64()),
        }
    )

    # Topic membership: primary at full popularity, secondary at half.
    members_topic = np.concatenate([primary, secondary[secondary >= 0]])
    members_item = np.concatenate([item_index, item_index[secondary >= 0]])
    members_weight = np.concatenate([popularity, 0.5 * popularity[secondary >= 0]])
    topic_items, topic_cdf = [], []
    for t in range(n_topics):
        mask = members_topic == t
        topic_items.append(members_item[mask])
        topic_cdf.append(np.cumsum(members_weight[mask]))
    catalog = Catalog(
        popularity=popularity,
        topic_items=topic_items,
        topic_cdf=topic_cdf,
        global_cdf=np.cumsum(popularity),
        has_items=np.array([len(x) > 0 for x in topic_items]),
    )
    return table, catalog


def _draw(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF sampling: indices into `cdf` for uniforms `u` in [0, 1)."""
    return np.minimum(np.searchsorted(cdf, u * cdf[-1], side="right"), len(cdf) - 1)


# --------------------------------------------------------------------------- users and interactions


def make_user_chunk(
    cfg: GenerateConfig, catalog: Catalog, first_user: int, n_users: int, rng: np.random.Generator
) -> tuple[pa.Table, pa.Table]:
    """Users ``first_user .. first_user + n_users - 1`` and their interactions."""
    n_topics = cfg.topics
    alpha = np.full(n_topics, TASTE_CONCENTRATION)
    early = rng.dirichlet(alpha, size=n_users) * catalog.has_items  # (U, T)
    late = (1 - DRIFT) * early + DRIFT * rng.dirichlet(alpha, size=n_users) * catalog.has_items
    early /= early.sum(axis=1, keepdims=True)
    late /= late.sum(axis=1, keepdims=True)

    dominant = early.argmax(axis=1)  # (U,)
    country_from_taste = dominant % len(COUNTRIES)
    country = np.where(rng.random(n_users) < 0.7, country_from_taste, rng.integers(0, len(COUNTRIES), n_users))
    age_from_taste = (dominant * 3 + 1) % len(AGE_BANDS)
    age = np.where(rng.random(n_users) < 0.5, age_from_taste, rng.integers(0, len(AGE_BANDS), n_users))
    sigma = 0.5
    activity = rng.lognormal(-sigma**2 / 2, sigma, size=n_users)  # mean 1
    counts = np.clip(rng.poisson(cfg.interactions_per_user * activity), 2, 10 * cfg.interactions_per_user)
    counts = np.minimum(counts, cfg.items)

    # One row per event: which user, and how far through their history (0 .. 1).
    user_of_row = np.repeat(np.arange(n_users), counts)  # (R,)
    starts = np.cumsum(counts) - counts
    position = np.arange(len(user_of_row)) - starts[user_of_row]
    progress = position / np.maximum(counts[user_of_row] - 1, 1)

    # Topic from the taste in force at that point of the history (early -> late drift).
    taste = np.where((rng.random(len(user_of_row)) < progress)[:, None], late[user_of_row], early[user_of_row])
    topic = (rng.random(len(user_of_row))[:, None] > np.cumsum(taste, axis=1)).sum(axis=1)
    topic = np.minimum(topic, n_topics - 1)
    item = np.empty(len(user_of_row), dtype=np.int64)
    explore = rng.random(len(user_of_row)) < EXPLORATION
    item[explore] = _draw(catalog.global_cdf, rng.random(int(explore.sum())))
    for t in range(n_topics):
        rows = np.flatnonzero((topic == t) & ~explore)
        if len(rows):
            item[rows] = catalog.topic_items[t][_draw(catalog.topic_cdf[t], rng.random(len(rows)))]

    # No repeats: keep a user's first event with each item.
    _, first = np.unique(user_of_row * cfg.items + item, return_index=True)
    keep = np.sort(first)
    user_of_row, item = user_of_row[keep], item[keep]

    # Increasing times: each user starts somewhere in the first 60% and spreads events over part of the rest.
    span_s = SPAN_DAYS * 86_400
    start = rng.uniform(0, 0.6, n_users) * span_s
    length = rng.uniform(0.2, 1.0, n_users) * (span_s - start)
    gaps = rng.exponential(1.0, size=len(item))
    kept_counts = np.bincount(user_of_row, minlength=n_users)
    seg_start = np.cumsum(kept_counts) - kept_counts
    cum = np.cumsum(gaps)
    before = np.where(seg_start > 0, cum[np.maximum(seg_start - 1, 0)], 0.0)
    seg_total = cum[np.maximum(seg_start + kept_counts - 1, 0)] - before
    within = (cum - before[user_of_row]) / np.maximum(seg_total[user_of_row], 1e-12)
    seconds = (start[user_of_row] + within * length[user_of_row]).astype(np.int64)
    ts_us = (int(START.timestamp()) + seconds) * 1_000_000

    user_ids = format_ids("u", np.arange(first_user, first_user + n_users), _id_width(cfg.users), cfg.id_type)
    item_ids = format_ids("i", np.arange(cfg.items), _id_width(cfg.items), cfg.id_type)
    users = pa.table(
        {
            "user_id": user_ids,
            "country": pa.array(np.asarray(COUNTRIES)[country], pa.string()),
            "age_band": pa.array(np.asarray(AGE_BANDS)[age], pa.string()),
            "activity": pa.array(np.round(activity, 4), pa.float64()),
        }
    )
    interactions = pa.table(
        {
            "user_id": user_ids.take(pa.array(user_of_row)),
            "item_id": item_ids.take(pa.array(item)),
            "ts": pa.array(ts_us, pa.int64()).cast(TIMESTAMP_TYPE),
        }
    )
    return users, interactions


def users_per_chunk(cfg: GenerateConfig) -> int:
    """Chunk size that bounds one chunk's (rows x topics) taste matrix."""
    rows_per_user = 2 * cfg.interactions_per_user + 2
    return int(max(1_000, min(200_000, ROWS_PER_CHUNK_TOPIC // (rows_per_user * max(cfg.topics, 1)))))


def generate_demo(cfg: GenerateConfig, out_dir: str | Path) -> dict:
    """Write ``interactions.parquet``, ``items.parquet`` and ``users.parquet`` to `out_dir`.

    Returns counts, file paths and the seconds taken. The same config always
    writes the same rows.
    """
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items, catalog = make_items(cfg, np.random.default_rng([cfg.seed, 0]))
    pq.write_table(items, out / "items.parquet")

    id_type = id_arrow_type(cfg.id_type)
    users_schema = pa.schema(
        [("user_id", id_type), ("country", pa.string()), ("age_band", pa.string()), ("activity", pa.float64())]
    )
    interactions_schema = pa.schema([("user_id", id_type), ("item_id", id_type), ("ts", TIMESTAMP_TYPE)])
    chunk = users_per_chunk(cfg)
    n_interactions = 0
    with (
        pq.ParquetWriter(out / "users.parquet", users_schema) as users_writer,
        pq.ParquetWriter(out / "interactions.parquet", interactions_schema) as interactions_writer,
    ):
        for index, first_user in enumerate(range(0, cfg.users, chunk)):
            n_users = min(chunk, cfg.users - first_user)
            rng = np.random.default_rng([cfg.seed, 1, index])
            users, interactions = make_user_chunk(cfg, catalog, first_user, n_users, rng)
            users_writer.write_table(users)
            interactions_writer.write_table(interactions)
            n_interactions += interactions.num_rows

    return {
        "out_dir": str(out),
        "users": cfg.users,
        "items": cfg.items,
        "topics": cfg.topics,
        "interactions": n_interactions,
        "unavailable_items": int(items.num_rows - pc.sum(items["available"]).as_py()),
        "id_type": cfg.id_type,
        "seconds": round(time.perf_counter() - started, 3),
        "files": {name: str(out / f"{name}.parquet") for name in ("interactions", "items", "users")},
    }
