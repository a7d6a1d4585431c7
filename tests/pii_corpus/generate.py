#!/usr/bin/env python3
"""Deterministic generator for the sluice PII accuracy corpus.

Writes tests/pii_corpus/corpus.jsonl: one JSON object per line,
  {"text": ..., "entities": [{"type": "SSN", "start": s, "end": e}, ...]}
Offsets are Unicode code point (Python str) offsets, end exclusive. The generated part is
seeded (random.Random(20261129)) so re-running produces identical output; hand-written hard
cases from hard_cases.jsonl are appended verbatim.

Labels are computed, not typed: cards carry a valid Luhn digit and a real IIN, IBANs a valid
mod-97 checksum, SSNs valid area/group/serial, phones valid NANP area/exchange.
"""
import base64
import json
import os
import random
import re
import string

R = random.Random(20261129)
HERE = os.path.dirname(os.path.abspath(__file__))


def luhn_complete(prefix, length):
    digits = prefix + "".join(R.choice(string.digits) for _ in range(length - len(prefix) - 1))
    for check in string.digits:
        cand = digits + check
        total = 0
        for i, ch in enumerate(reversed(cand)):
            d = int(ch)
            if i % 2 == 1:
                d *= 2
                if d > 9:
                    d -= 9
            total += d
        if total % 10 == 0:
            return cand
    raise AssertionError


def luhn_ok(num):
    total = 0
    for i, ch in enumerate(reversed(num)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


CARD_BRANDS = [
    ("4", 16), ("4", 16), ("4", 13), ("51", 16), ("55", 16), ("2221", 16), ("2720", 16),
    ("34", 15), ("37", 15), ("6011", 16), ("65", 16), ("3530", 16), ("36", 14), ("62", 16),
]


def card():
    prefix, length = R.choice(CARD_BRANDS)
    num = luhn_complete(prefix, length)
    style = R.choice(["bare", "space", "dash", "space", "dash"])
    if style == "bare":
        return num
    sep = " " if style == "space" else "-"
    if length == 15:
        groups = [num[:4], num[4:10], num[10:]]
    elif length == 14:
        groups = [num[:4], num[4:10], num[10:]]
    else:
        groups = [num[i:i + 4] for i in range(0, length, 4)]
    return sep.join(groups)


def bad_card():
    prefix, length = R.choice(CARD_BRANDS)
    num = luhn_complete(prefix, length)
    last = str((int(num[-1]) + R.randint(1, 9)) % 10)
    return num[:-1] + last


def ssn(style=None):
    while True:
        a = R.randint(1, 899)
        if a != 666:
            break
    g, s = R.randint(1, 99), R.randint(1, 9999)
    style = style or R.choice(["dash", "dash", "dash", "space"])
    sep = "-" if style == "dash" else " "
    if style == "bare":
        sep = ""
    return f"{a:03d}{sep}{g:02d}{sep}{s:04d}"


def invalid_ssn():
    a = R.choice([0, 666, R.randint(900, 999)])
    return f"{a:03d}-{R.randint(1, 99):02d}-{R.randint(1, 9999):04d}"


FIRST = ["john", "jane", "maria", "li.wei", "a.smith", "ops", "billing", "k_nakamura", "o.brien", "zoe+news"]
DOMAINS = ["example.com", "corp.example.org", "mail.example.co.uk", "bank-example.net", "example.io"]


def email():
    return f"{R.choice(FIRST)}{R.choice(['', str(R.randint(1, 99))])}@{R.choice(DOMAINS)}"


def nanp_part(first_min=2):
    while True:
        x = f"{R.randint(first_min, 9)}{R.randint(0, 8)}{R.randint(0, 9)}"
        if x[1:] != "11":
            return x


def phone():
    area, exch = nanp_part(), nanp_part()
    while area[:2] in ("37", "96"):  # reserved NANP area code blocks
        area = nanp_part()
    while exch[1:] == "11":
        exch = nanp_part()
    sub = f"{R.randint(0, 9999):04d}"
    style = R.randint(0, 6)
    if style == 0:
        return f"({area}) {exch}-{sub}"
    if style == 1:
        return f"{area}-{exch}-{sub}"
    if style == 2:
        return f"{area}.{exch}.{sub}"
    if style == 3:
        return f"+1 {area} {exch} {sub}"
    if style == 4:
        return f"+1-{area}-{exch}-{sub}"
    if style == 5:
        return f"+1{area}{exch}{sub}"
    return R.choice(["+44 20 7946 0%03d", "+49 30 9018%04d", "+33 1 42 68 %02d 00", "+81-3-1234-%04d", "+61 2 9374 %04d"]) % R.randint(0, 99)


IBAN_LEN = {"DE": 22, "GB": 22, "FR": 27, "NL": 18, "ES": 24, "IT": 27, "CH": 21, "BE": 16, "AT": 20, "PL": 28}


def iban():
    cc = R.choice(list(IBAN_LEN))
    n = IBAN_LEN[cc]
    if cc in ("GB", "NL"):
        bban = "".join(R.choice(string.ascii_uppercase) for _ in range(4)) + "".join(R.choice(string.digits) for _ in range(n - 8))
    else:
        bban = "".join(R.choice(string.digits) for _ in range(n - 4))
    rearr = bban + cc + "00"
    num = int("".join(str(int(c, 36)) for c in rearr))
    check = 98 - num % 97
    s = f"{cc}{check:02d}{bban}"
    if R.random() < 0.5:
        s = " ".join(s[i:i + 4] for i in range(0, len(s), 4))
    return s


def ipv4():
    return ".".join(str(x) for x in [R.choice([10, 172, 192, 8, 34, 52, 203]), R.randint(0, 255), R.randint(0, 255), R.randint(1, 254)])


def ipv6():
    groups = [f"{R.randint(0, 0xffff):x}" for _ in range(8)]
    groups[0] = R.choice(["2001", "fe80", "2a00", "2600"])
    if R.random() < 0.5:
        return ":".join(groups)
    return ":".join(groups[:3]) + "::" + groups[7]


def rand_str(alphabet, n):
    return "".join(R.choice(alphabet) for _ in range(n))


ALNUM = string.ascii_letters + string.digits


def aws():
    return R.choice(["AKIA", "ASIA"]) + rand_str(string.ascii_uppercase + string.digits, 16)


def api_key():
    k = R.randint(0, 2)
    if k == 0:
        return "sk-proj-" + rand_str(ALNUM + "_-", 60) + "7"
    if k == 1:
        return "sk-ant-api03-" + rand_str(ALNUM + "_-", 80) + "AA"
    return "sk-" + rand_str(ALNUM, 20) + "T3BlbkFJ" + rand_str(ALNUM, 19) + "1"


def github():
    if R.random() < 0.7:
        return R.choice(["ghp_", "gho_", "ghu_", "ghs_", "ghr_"]) + rand_str(ALNUM, 36)
    return "github_pat_11" + rand_str(ALNUM, 20) + "_" + rand_str(ALNUM, 59)


def b64u(obj):
    return base64.urlsafe_b64encode(json.dumps(obj, separators=(",", ":")).encode()).decode().rstrip("=")


def jwt():
    h = b64u({"alg": "HS256", "typ": "JWT"})
    p = b64u({"sub": str(R.randint(1, 10**6)), "name": R.choice(FIRST), "iat": 1516239022})
    s = rand_str(ALNUM + "_-", 43)
    return f"{h}.{p}.{s}"


def pem():
    label = R.choice(["RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY"])
    body = "\n".join(rand_str(ALNUM + "+/", 64) for _ in range(R.randint(2, 5)))
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----"


GEN = {
    "SSN": ssn, "CREDIT_CARD": card, "EMAIL": email, "PHONE": phone, "IBAN": iban,
    "IP_ADDRESS": lambda: ipv4() if R.random() < 0.7 else ipv6(), "AWS_KEY": aws,
    "API_KEY": api_key, "GITHUB_TOKEN": github, "JWT": jwt, "PRIVATE_KEY": pem,
}

TEMPLATES = {
    "SSN": ["My SSN is {}.", "social security number: {}", "Employee SSN {} on file", "ssn={} ", "Please verify SSN ({}) before payroll."],
    "CREDIT_CARD": ["Charge my card {} please.", "Visa {} exp 12/27", "cc: {}", "Payment card number {} was declined", "use {} for the deposit"],
    "EMAIL": ["Contact me at {}.", "Email: {}", "send the report to {} asap", "<{}>", "cc {}, thanks"],
    "PHONE": ["Call me at {}.", "Phone: {}", "mobile {} after 5pm", "Reach the desk on {}", "tel:{}"],
    "IBAN": ["Wire to IBAN {} today.", "IBAN: {}", "Account {} (EUR)", "pay into {} please"],
    "IP_ADDRESS": ["Server IP {} is down", "connect from {} failed", "host={} ", "Client address: {}."],
    "AWS_KEY": ["aws_access_key_id = {}", "key {} leaked", "export AWS_ACCESS_KEY_ID={}"],
    "API_KEY": ["OPENAI_API_KEY={}", "use key {} for the call", "Authorization: Bearer {}"],
    "GITHUB_TOKEN": ["token: {}", "git clone https://{}@github.com/org/repo", "GH_TOKEN={}"],
    "JWT": ["Authorization: Bearer {}", "session={}; path=/", "the token is {}"],
    "PRIVATE_KEY": ["here is the key:\n{}\nkeep it safe", "{}"],
}

UNICODE_WRAP = ["Имя: Иван — {} ✓", "電話番号：{}。", "📧 {} 🙏", "Größe: {} — café", "«{}»", "{}\u00a0ok"]


def positive(kind):
    val = GEN[kind]()
    r = R.random()
    if r < 0.15:
        tpl = R.choice(UNICODE_WRAP)
    elif r < 0.3:
        key = kind.lower()
        tpl = '{"user": "u1", "%s": "{}", "note": "x"}' % key
        if kind == "PRIVATE_KEY":
            tpl = "{}"
    else:
        tpl = R.choice(TEMPLATES[kind])
    if kind == "SSN" and R.random() < 0.15:
        val = ssn("bare")
        tpl = R.choice(["SSN: {}", "my social security number is {}", "ssn {} on the W-2"])
    pre, post = tpl.split("{}", 1)
    text = pre + val + post
    return {"text": text, "entities": [{"type": kind, "start": len(pre), "end": len(pre) + len(val)}]}


def multi():
    kinds = R.sample(["SSN", "CREDIT_CARD", "EMAIL", "PHONE", "IBAN", "IP_ADDRESS", "AWS_KEY", "JWT"], 3)
    text, ents = "Customer record: ", []
    for k in kinds:
        val = GEN[k]()
        label = {"SSN": "ssn", "CREDIT_CARD": "card", "EMAIL": "email", "PHONE": "phone", "IBAN": "iban", "IP_ADDRESS": "ip", "AWS_KEY": "key", "JWT": "token"}[k]
        text += f"{label} "
        ents.append({"type": k, "start": len(text), "end": len(text) + len(val)})
        text += val + "; "
    return {"text": text.strip(), "entities": ents}


def negative():
    k = R.randint(0, 19)
    if k == 0:
        return f"Order #{bad_card()} shipped"
    if k == 1:
        return f"epoch ms {R.randint(1_600_000_000_000, 1_800_000_000_000)} logged"
    if k == 2:
        return f"released v{R.randint(0, 9)}.{R.randint(0, 20)}.{R.randint(0, 50)} today"
    if k == 3:
        return f"bump to {R.randint(0, 9)}.{R.randint(0, 9)}.{R.randint(0, 9)}.{R.randint(0, 9)}.{R.randint(0, 9)}"
    if k == 4:
        return f"semver {R.randint(0, 5)}.{R.randint(0, 30)}.{R.randint(0, 9)}-beta.{R.randint(1, 9)}+build.{R.randint(100, 999)}"
    if k == 5:
        return f"    let x = {R.randint(1000000, 9999999)}; // magic"
    if k == 6:
        u = "%08x-%04x-%04x-%04x-%012x" % (R.getrandbits(32), R.getrandbits(16), R.getrandbits(16), R.getrandbits(16), R.getrandbits(48))
        return f"request id {u}"
    if k == 7:
        return f"Invoice {R.randint(100000000, 999999999)} is due"
    if k == 8:
        return f"sha256 {R.getrandbits(256):064x}"
    if k == 9:
        return f"ISBN 978-{R.randint(0, 9)}-{R.randint(10, 99)}-{R.randint(100000, 999999)}-{R.randint(0, 9)}"
    if k == 10:
        return f"meeting on {R.randint(1, 12):02d}/{R.randint(1, 28):02d}/20{R.randint(10, 30)} at {R.randint(0, 23):02d}:{R.randint(0, 59):02d}:{R.randint(0, 59):02d}"
    if k == 11:
        return f"listening on localhost:{R.randint(1024, 65535)}"
    if k == 12:
        return f"SSN-like {invalid_ssn()} is not issued"
    if k == 13:
        return f"tracking number {R.randint(10**9, 10**10 - 1)} in transit"
    if k == 14:
        return f"total ${R.randint(1, 999)},{R.randint(100, 999)},{R.randint(100, 999)}.{R.randint(10, 99)}"
    if k == 15:
        return f"git commit {R.getrandbits(160):040x}"
    if k == 16:
        return f"timestamp 20{R.randint(10, 30)}-{R.randint(1, 12):02d}-{R.randint(1, 28):02d}T{R.randint(0, 23):02d}:{R.randint(0, 59):02d}:{R.randint(0, 59):02d}Z"
    if k == 17:
        return f"call 123-456-{R.randint(1000, 9999)} (not a real area code)"
    if k == 18:
        return f"the risk-management-framework-{R.randint(100, 999)} doc and task-{rand_str(string.ascii_lowercase, 24)}"
    return f"MAC {':'.join('%02X' % R.randint(0, 255) for _ in range(6))} on port {R.randint(1, 65535)}"


MARK = re.compile(r"\[\[([A-Z_]+)\|(.*?)\]\]", re.S)


def hard_cases():
    """Parse hard_cases.txt: entities marked as [[TYPE|value]], literal \\n = newline."""
    out = []
    with open(os.path.join(HERE, "hard_cases.txt"), encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            line = line.replace("\\n", "\n")
            text, ents, pos = "", [], 0
            for m in MARK.finditer(line):
                text += line[pos:m.start()]
                ents.append({"type": m.group(1), "start": len(text), "end": len(text) + len(m.group(2))})
                text += m.group(2)
                pos = m.end()
            text += line[pos:]
            out.append({"text": text, "entities": ents})
    return out


def main():
    rows = []
    kinds = list(GEN)
    for i in range(560):
        rows.append(positive(kinds[i % len(kinds)]))
    for _ in range(60):
        rows.append(multi())
    for _ in range(300):
        rows.append({"text": negative(), "entities": []})
    rows.extend(hard_cases())
    # sanity: every label's text re-validates
    for r in rows:
        for e in r["entities"]:
            v = r["text"][e["start"]:e["end"]]
            if e["type"] == "CREDIT_CARD":
                assert luhn_ok("".join(c for c in v if c.isdigit())), v
    with open(os.path.join(HERE, "corpus.jsonl"), "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} snippets")


if __name__ == "__main__":
    main()
