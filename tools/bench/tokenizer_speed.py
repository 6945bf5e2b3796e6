#!/usr/bin/env python3
"""Hugging Face `tokenizers` speed on the same documents troupe_bench tokenizer-speed uses.

Prints one line: "<MB/s one thread> <MB/s all cores> <tokens>". The documents are the file's
blank-line separated paragraphs, encoded with encode_batch (add_special_tokens=False); one
thread is RAYON_NUM_THREADS=1 in a child process, since rayon's pool size is fixed at start.
Usage: tokenizer_speed.py TOKENIZER TEXT [--threads N]
"""
import os
import subprocess
import sys
import time


def measure(tokenizer, text_path, rounds=3):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(tokenizer)
    with open(text_path, encoding="utf-8") as f:
        docs = [d for d in f.read().split("\n\n") if d]
    size = sum(len(d.encode()) for d in docs)
    tok.encode_batch(docs[:100], add_special_tokens=False)  # warm up the pool
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        out = tok.encode_batch(docs, add_special_tokens=False)
        best = min(best, time.perf_counter() - start)
    return size / best / 1e6, sum(len(e.ids) for e in out)


def main():
    tokenizer, text = sys.argv[1], sys.argv[2]
    if len(sys.argv) > 3 and sys.argv[3] == "--child":
        mbps, tokens = measure(tokenizer, text)
        print(mbps, tokens)
        return
    one = subprocess.run([sys.executable, __file__, tokenizer, text, "--child"], capture_output=True, text=True,
                         env=dict(os.environ, RAYON_NUM_THREADS="1"), check=True).stdout.split()
    many = subprocess.run([sys.executable, __file__, tokenizer, text, "--child"], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "RAYON_NUM_THREADS"}, check=True).stdout.split()
    print(one[0], many[0], one[1])


if __name__ == "__main__":
    main()
