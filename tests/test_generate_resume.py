"""A generation job killed after its first chunk keeps it: the retry generates only the rest."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from pd.generate import make_generator
from pd.generate.base import SamplingParams

N, CHUNK = 12, 4
PARAMS = SamplingParams(temperature=1.0, max_new_tokens=300, seed=11)
CONVS = [[{"role": "user", "content": f"Tell me about bridge number {i}."}] for i in range(N)]

CHILD = textwrap.dedent(f"""
    import sys
    sys.path.insert(0, {str(Path(__file__).parent)!r})
    from test_generate_resume import CONVS, PARAMS, CHUNK
    from pd.generate import make_generator
    from pd.generate.cache import CachedGenerator
    gen = make_generator("tiny-llama", batch_size=CHUNK, progress=False)
    CachedGenerator(gen, sys.argv[1], chunk=CHUNK).generate(CONVS, PARAMS)
""")


def _entries(cache: Path) -> int:
    return sum(1 for _ in cache.rglob("*.json"))


def test_killed_after_first_chunk_retry_generates_only_the_rest(tmp_path):
    cache = tmp_path / "cache"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(cache)], env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300
    while _entries(cache) < CHUNK and child.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.wait()
    done = _entries(cache)
    assert CHUNK <= done < N and done % CHUNK == 0, done  # whole chunks only, and not all of them

    gen = make_generator("tiny-llama", batch_size=CHUNK, progress=False, cache_dir=cache)
    resumed = gen.generate(CONVS, PARAMS)
    assert gen.hits == done and gen.misses == N - done
    assert gen.inner.conversations_generated == N - done

    fresh = make_generator("tiny-llama", batch_size=CHUNK, progress=False)  # no cache: one uninterrupted run
    full = fresh.generate(CONVS, PARAMS)
    assert [c[0].token_ids for c in resumed] == [c[0].token_ids for c in full]
