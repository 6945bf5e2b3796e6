#!/usr/bin/env python3
"""Checks `troupe tokenizer` against Hugging Face `tokenizers` (the reference implementation).

For the bundled data/kjv/tokenizer.json and the real Llama 3.1, Qwen3 (NFC normalizer) and
DeepSeek V3 (a sequence of Split pre-tokenizers) tokenizer.json files of ../shared/tokenizers/
(or --shared DIR; their absence is a failure, not a skip), encodes a varied corpus with
`Tokenizer.from_file(f).encode(text, add_special_tokens=False)` and with
`troupe tokenizer encode`, requires identical ids, and requires `troupe tokenizer decode` to give
the text back. Invalid UTF-8 input must be refused with the byte offset. Then trains a fresh
tokenizer with `troupe tokenizer train` and requires HF to load it and encode identically. Exits
1 with a diff on the first mismatch.

The corpus holds added-token text of each family ("<|eot_id|>", "<|im_start|>", DeepSeek's
full-width-bar tokens), which both sides turn into the added token. It keeps to characters of
Unicode 14 and earlier: troupe's PCRE2 10.42 classifies newer ones (HF knows Unicode 16) as
unassigned, so \p{L} and \p{N} would disagree on them.

Usage: tokenizer_oracle.py --troupe PATH_TO_TROUPE [--repo REPO_ROOT] [--shared DIR]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

from tokenizers import Tokenizer


def kjv_excerpts(repo):
    """A few chapters' worth of lines from the bundled corpus, from its start, middle and end."""
    with open(os.path.join(repo, "data/kjv/kjv.txt"), encoding="utf-8") as f:
        lines = f.read().split("\n")
    picks = []
    for start in (0, len(lines) // 3, len(lines) // 2, len(lines) - 60):
        picks.append("\n".join(lines[start:start + 40]))
    return picks


SAMPLES = [
    "   leading spaces, then a sentence.",
    "The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX!",
    "It's, don't, we're, they've, I'm, you'll, he'd; IT'S DON'T WE'RE THEY'VE I'M YOU'LL HE'D.",
    "Curly: it\u2019s \u201cquoted\u201d \u2018single\u2019 \u2014 dash \u2013 en-dash\u2026 ellipsis.",
    "'s 't 're 've 'm 'll 'd '' 'x \"double\" ''s",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n\n\nprint(fib(30))\n",
    "int main(int argc, char** argv) {\n\tstd::vector<int> v{1, 2, 3};\n\tfor (auto& x : v) x *= 2;  // double\n\treturn v[0] == 2 ? 0 : 1;\n}\n",
    "SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%son';",
    '{"key": [1, 2.5, -3e10, null, true], "nested": {"a": "b"}}',
    "https://example.com/path?query=1&other=two#frag  mailto:someone@example.org",
    "Digits: 0 12 123 1234 12345 123456 1234567 3.14159 1,000,000 2024-06-01 12:34:56 0xDEADBEEF 1e-9",
    "Other digits: \u0663\u0664\u0665 \u0967\u0968\u0969 \uff11\uff12\uff13 x\u00b2 \u216b \u2460\u2461 \u00bd",
    "Fran\u00e7ais: \u00e0 l'\u00e9cole, o\u00f9 \u00e9t\u00e9 na\u00efve c\u0153ur. Deutsch: Stra\u00dfe \u00fcber \u00c4rger. Espa\u00f1ol: \u00bfQu\u00e9 pasa? \u00a1Ol\u00e9!",
    "Combining: e\u0301 a\u0308 n\u0303 \u1e9b\u0323 and precomposed \u00e9 \u00e4 \u00f1",
    "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac: \u03ba\u03b1\u03bb\u03b7\u03bc\u03ad\u03c1\u03b1 \u03ba\u03cc\u03c3\u03bc\u03b5. \u0420\u0443\u0441\u0441\u043a\u0438\u0439: \u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u0423\u043a\u0440\u0430\u0457\u043d\u0441\u044c\u043a\u0430: \u0457\u0436\u0430\u043a.",
    "\u05e2\u05d1\u05e8\u05d9\u05ea: \u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd. \u0627\u0644\u0639\u0631\u0628\u064a\u0629: \u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645\u060c \u0643\u064a\u0641 \u062d\u0627\u0644\u0643\u061f",
    "\u0939\u093f\u0928\u094d\u0926\u0940: \u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e\u0964 \u0e20\u0e32\u0e29\u0e32\u0e44\u0e17\u0e22: \u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35\u0e04\u0e23\u0e31\u0e1a \u0ba4\u0bae\u0bbf\u0bb4\u0bcd: \u0bb5\u0ba3\u0b95\u0bcd\u0b95\u0bae\u0bcd",
    "\u4e2d\u6587\uff1a\u4f60\u597d\uff0c\u4e16\u754c\uff01\u6211\u4eec\u5728\u5b66\u4e60\u5206\u8bcd\u3002\u65e5\u672c\u8a9e\uff1a\u3053\u3093\u306b\u3061\u306f\u4e16\u754c\u3001\u30ab\u30bf\u30ab\u30ca\u3082\u3002\ud55c\uad6d\uc5b4: \uc548\ub155\ud558\uc138\uc694 \uc138\uacc4",
    "Emoji: \U0001f600 \U0001f44d\U0001f3fd \U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 \U0001f1fa\U0001f1f8 \u2764\ufe0f \U0001f525\U0001f525\U0001f525 a\U0001f600b",
    "Symbols: \u20ac100 \u00a35 \u00a5 \u00a9 \u00ae \u2122 \u00b0C \u2211 \u221e \u2248 \u2260 \u2264 \u2192 \u2022 \u00a7 \u00b6 \u2020",
    "Punctuation runs: !!! ??? ... --- *** ### @@@ $$$ %%% ^^^ &&& ((( ))) [[[ ]]] {{{ }}} ~~~ ``` |||",
    "Whitespace:  two   three    four\ttab\t\ttabs \t mixed\n\nblank line\n\n\n\nmany\r\nCRLF\r\n\r\nend   \n  trailing",
    "Odd spaces: a\u00a0b\u2003c\u3000d\u2009e\u200bf\u2028g\u2029h\u0085i\u000bj\u000ck\u1680l\u202fm\u205fn",
    # U+180E is not White_Space for HF's Oniguruma (Unicode 6.3+) but is \s for PCRE2.
    "Mongolian vowel separator: a \u180e's x\u180e\u180e y \u180e\n\u0085 \u0085'S",
    "Space before newline \n tab before newline\t\nnewline then spaces\n    indented\n\n    \n  \n",
    "Control chars: \u0001\u0002\u001b[31mred\u001b[0m \u007f \u0000 null inside",
    "a" * 3000,
    " " * 2500 + "x" + "\n" * 300 + "\t" * 200,
    "9" * 1001 + " " + "ab1" * 200,
    "MiXeD CaSe WoRdS aNd CamelCaseIdentifiers snake_case_names kebab-case-words",
    "Special text: <|begin_of_text|>hi<|end_of_text|> x<|eot_id|>\n<|start_header_id|>user<|end_header_id|>"
    " <|im_start|>system<|im_end|> <think>a</think> <|endoftext|> <tool_call>"
    " \uff5cnot<\uff5cbegin\u2581of\u2581sentence\uff5c>q<\uff5cUser\uff5c><\uff5ctool\u2581sep\uff5c>"
    " <|begin_of_text <|unknown|> <|end_of_text|><|end_of_text|>",
    "NFC: e\u0301 A\u030a \u212b \u2126 \u1100\u1161\u11a8 \ufb01 \u0958 \u1e9b\u0323 q\u0307\u0323 o\u0308\u0304"
    " \u00c5 \uac01 \u0344 \u0f73 \u2000 \uff21",
    "Han and kana runs (DeepSeek splits them): \u4e2d\u6587\u6587\u672c\u3072\u3089\u304c\u306a\u30ab\u30bf\u30ab\u30caabc123\u4e00",
    "Digits and punctuation (DeepSeek): a1234567b 12,345.678 ($5) --x ..y #tag @user 'quote' \"dq\" \u00b7\u2026",
]


def run(cmd, stdin=None):
    return subprocess.run(cmd, input=stdin, capture_output=True)


class Failure(Exception):
    pass


def troupe_encode(troupe, tokenizer, path):
    r = run([troupe, "tokenizer", "encode", "--tokenizer", tokenizer, "--input", path])
    if r.returncode != 0:
        raise Failure(f"troupe tokenizer encode failed ({r.returncode}): {r.stderr.decode(errors='replace')}")
    return [int(x) for x in r.stdout.split()]


def troupe_decode(troupe, tokenizer, ids):
    r = run([troupe, "tokenizer", "decode", "--tokenizer", tokenizer], stdin=" ".join(map(str, ids)).encode())
    if r.returncode != 0:
        raise Failure(f"troupe tokenizer decode failed ({r.returncode}): {r.stderr.decode(errors='replace')}")
    return r.stdout


def describe_mismatch(hf_tok, text, hf_ids, ours):
    i = next((k for k, (a, b) in enumerate(zip(hf_ids, ours)) if a != b), min(len(hf_ids), len(ours)))
    enc = hf_tok.encode(text, add_special_tokens=False)
    at = enc.offsets[min(i, len(enc.offsets) - 1)][0] if enc.offsets else 0
    lo, hi = max(0, i - 5), i + 6
    return (f"first difference at token {i} of {len(hf_ids)} (HF) / {len(ours)} (troupe), "
            f"near text {text[max(0, at - 30):at + 30]!r}\n"
            f"  HF     ids[{lo}:{hi}] = {hf_ids[lo:hi]} {[hf_tok.id_to_token(t) for t in hf_ids[lo:hi]]}\n"
            f"  troupe ids[{lo}:{hi}] = {ours[lo:hi]} {[hf_tok.id_to_token(t) for t in ours[lo:hi]]}")


def check_tokenizer(troupe, tokenizer, text, workdir):
    """Requires encode to equal HF's on `text` and decode to give `text` back."""
    hf_tok = Tokenizer.from_file(tokenizer)
    path = os.path.join(workdir, "text.txt")
    with open(path, "wb") as f:
        f.write(text.encode("utf-8"))
    hf_ids = hf_tok.encode(text, add_special_tokens=False).ids
    ours = troupe_encode(troupe, tokenizer, path)
    if ours != hf_ids:
        raise Failure(f"{tokenizer}: encode differs from HF\n" + describe_mismatch(hf_tok, text, hf_ids, ours))
    decoded = troupe_decode(troupe, tokenizer, ours)
    # A normalizing tokenizer (Qwen3's NFC) gives back the normalized text, as HF's does.
    expected = hf_tok.normalizer.normalize_str(text) if hf_tok.normalizer is not None else text
    if decoded != expected.encode("utf-8"):
        raise Failure(f"{tokenizer}: decode(encode(text)) != normalized text ({len(decoded)} vs {len(expected.encode())} bytes)")
    print(f"ok  {tokenizer}: {len(text.encode())} bytes -> {len(ours)} tokens, identical to HF, round trip exact")


def check_training(troupe, text, workdir):
    """A tokenizer freshly trained by troupe must load in HF and encode the same there."""
    sample = os.path.join(workdir, "train.txt")
    with open(sample, "wb") as f:
        f.write(text.encode("utf-8"))
    out = os.path.join(workdir, "trained.tokenizer.json")
    r = run([troupe, "tokenizer", "train", "--input", sample, "--vocab-size", "600", "--output", out])
    if r.returncode != 0:
        raise Failure(f"troupe tokenizer train failed ({r.returncode}): {r.stderr.decode(errors='replace')}")
    vocab = Tokenizer.from_file(out).get_vocab_size(with_added_tokens=True)
    if vocab != 600:
        raise Failure(f"trained tokenizer has {vocab} tokens in HF, expected 600")
    check_tokenizer(troupe, out, text, workdir)


def check_invalid_utf8(troupe, tokenizer, workdir):
    """Invalid UTF-8 must be a clear error naming the byte offset, never a crash or garbage ids."""
    path = os.path.join(workdir, "invalid.txt")
    with open(path, "wb") as f:
        f.write(b"valid start \xc3\x28 then more")
    r = run([troupe, "tokenizer", "encode", "--tokenizer", tokenizer, "--input", path])
    if r.returncode != 1 or b"offset 12" not in r.stderr:
        raise Failure(f"{tokenizer}: invalid UTF-8 gave exit {r.returncode}, stderr {r.stderr!r}")
    print(f"ok  {tokenizer}: invalid UTF-8 refused at its byte offset")


def gpt2_byte_decoder():
    """The byte-level BPE alphabet: printable bytes stand for themselves, the rest are shifted."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) + \
        list(range(ord("\u00ae"), ord("\u00ff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def check_tiktoken(troupe, llama_json, text, workdir):
    """Llama 3's tokenizer.model (a tiktoken rank file) made from its tokenizer.json: troupe reading
    the rank file must give the ids of the `tiktoken` package itself (and of HF)."""
    import base64
    import tiktoken
    with open(llama_json, encoding="utf-8") as f:
        spec = json.load(f)
    decode = gpt2_byte_decoder()
    ranks = {bytes(decode[c] for c in tok): rank for tok, rank in spec["model"]["vocab"].items()}
    specials = {t["content"]: t["id"] for t in spec["added_tokens"] if t["special"]}
    pattern = next(p["pattern"]["Regex"] for p in spec["pre_tokenizer"]["pretokenizers"] if p["type"] == "Split")
    model = os.path.join(workdir, "tokenizer.model")
    with open(model, "w") as f:
        for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
            f.write(f"{base64.b64encode(tok).decode()} {rank}\n")
    enc = tiktoken.Encoding("llama3_1", pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)
    want = enc.encode(text, allowed_special="all")
    path = os.path.join(workdir, "tiktoken_text.txt")
    with open(path, "wb") as f:
        f.write(text.encode("utf-8"))
    ours = troupe_encode(troupe, model, path)
    if ours != want:
        i = next((k for k, (a, b) in enumerate(zip(want, ours)) if a != b), min(len(want), len(ours)))
        raise Failure(f"tiktoken rank file: troupe differs from tiktoken at token {i}: "
                      f"tiktoken {want[max(0, i - 3):i + 4]} troupe {ours[max(0, i - 3):i + 4]}")
    if troupe_decode(troupe, model, ours) != text.encode("utf-8"):
        raise Failure("tiktoken rank file: decode(encode(text)) != text")
    print(f"ok  Llama 3.1 tokenizer.model (tiktoken rank file, {len(ranks)} ranks): {len(ours)} tokens, "
          f"identical to the tiktoken package, round trip exact")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--troupe", required=True, help="path to the troupe binary")
    p.add_argument("--repo", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    p.add_argument("--shared", help="folder of the real tokenizer files (default: REPO/../shared/tokenizers)")
    p.add_argument("--bundled-only", action="store_true",
                   help="only the bundled and a freshly trained tokenizer (the real files are not in the repo)")
    args = p.parse_args()
    repo = os.path.abspath(args.repo)
    shared = os.path.abspath(args.shared or os.path.join(repo, "..", "shared", "tokenizers"))
    text = "\n\n".join(SAMPLES + kjv_excerpts(repo))
    tokenizers = [os.path.join(repo, "data/kjv/tokenizer.json")]
    for name in () if args.bundled_only else ("llama3_1", "qwen3", "deepseek_v3"):
        path = os.path.join(shared, f"{name}.tokenizer.json")
        if not os.path.exists(path):
            print(f"FAIL {path} not found: the real tokenizers are required (pass --shared DIR)", file=sys.stderr)
            return 1
        tokenizers.append(path)
    try:
        with tempfile.TemporaryDirectory() as workdir:
            for tok in tokenizers:
                check_tokenizer(args.troupe, tok, text, workdir)
                check_invalid_utf8(args.troupe, tok, workdir)
            check_training(args.troupe, text, workdir)
            if not args.bundled_only:
                check_tiktoken(args.troupe, tokenizers[1], text, workdir)
    except Failure as e:
        print(f"FAIL {e}", file=sys.stderr)
        return 1
    print("tokenizer oracle: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
