"""Write data/sample_contacts.csv: ~2,400 synthetic contacts in HubSpot's export layout.

Everything is invented: names come from Faker, US and Canadian numbers from the 555-01XX
range reserved for fiction, UK numbers from Ofcom's drama ranges. The file carries the mess a
real export has (padded and upper-case emails, the same person arriving twice from two
sources, free-mail addresses, mixed phone formats, rows missing an email, a few broken rows)
so the pipeline has something to clean. Seeded throughout: two runs give identical bytes.

    python data/make_sample_contacts.py [--out PATH]
"""

from __future__ import annotations

import argparse
import csv
import random
import re
import sys
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import phonenumbers
from faker import Faker

SEED = 20260801
START = datetime(2026, 8, 1, tzinfo=UTC)
DAYS = 90  # 2026-08-01 .. 2026-10-29 inclusive
OUT = Path(__file__).with_name("sample_contacts.csv")
# US Eastern daylight time, in force for the whole sample period; a fixed offset needs no
# time-zone database.
EASTERN = timezone(timedelta(hours=-4))

HEADERS = (
    "Record ID",
    "Email",
    "First Name",
    "Last Name",
    "Phone Number",
    "Company Name",
    "Website URL",
    "LinkedIn URL",
    "Job Title",
    "City",
    "Country/Region",
    "Lead Source",
    "Create Date",
)
SOURCES = ("Web Form", "Partner Sync", "CSV Import", "Event Scan")
# Country code -> (Faker locale, Country/Region label, share of contacts).
COUNTRIES = {
    "US": ("en_US", "United States", 70),
    "GB": ("en_GB", "United Kingdom", 18),
    "CA": ("en_CA", "Canada", 12),
}

# Row counts by kind, out of 2,400 (percentages as the brief for this file asks).
REGULAR = 1944
REPEATS = 192  # 8%: a regular contact arriving a second time
PHONE_ONLY = 96  # 4%
NAME_COMPANY_ONLY = 72  # 3%
LINKEDIN_ONLY = 48  # 2%
FREE_MAIL_SHARE = 0.24  # of email rows, which makes ~20% of all rows
MESSY_EMAIL_SHARE = 0.11  # of email rows: upper-case and/or space-padded, ~10% of all rows

BAD_EMAILS = (
    "jane@@acme.com",
    "not-an-email",
    "bob.smith@",
    "@northwind-traders.com",
    "mary smith@globex.com",
    "john.doe@initech",
    "jane..doe@acme.com",
    "sam@acme..com",
    "info@",
    "alex.kim@globex,com",
    "peter(at)hooli.com",
    "anna@hooli@com",
    "li.wei@.com",
    "tom@-umbrella.com",
    "ravi@umbrella.com.",
    "chen@stark industries.com",
    "olga@@@wayne.com",
    "kate@wayne_enterprises.com",
    "m.rossi@",
    "sara@acme com",
    "luis@acme..org",
    "noreply",
    "dana@.initech.com",
)
GARBAGE_PHONES = ("12", "555", "000", "n/a", "12345", "+1 555", "1-800", "999999", "tbd", "0")
BAD_DATES = ("31/31/2026", "yesterday")
NAME_ONLY = 12
# Bad emails, garbage phones, names without a company, one all-blank row, bad dates: ~2%.
BROKEN = len(BAD_EMAILS) + len(GARBAGE_PHONES) + NAME_ONLY + 1 + len(BAD_DATES)

# Real area codes (so the numbers parse as valid) with the city they serve.
US_AREAS = {
    "212": "New York",
    "646": "New York",
    "415": "San Francisco",
    "213": "Los Angeles",
    "310": "Los Angeles",
    "312": "Chicago",
    "617": "Boston",
    "206": "Seattle",
    "303": "Denver",
    "512": "Austin",
    "214": "Dallas",
    "404": "Atlanta",
    "305": "Miami",
    "503": "Portland",
    "702": "Las Vegas",
    "919": "Raleigh",
    "615": "Nashville",
    "480": "Phoenix",
    "412": "Pittsburgh",
    "858": "San Diego",
}
CA_AREAS = {
    "416": "Toronto",
    "604": "Vancouver",
    "514": "Montreal",
    "403": "Calgary",
    "613": "Ottawa",
}
# Ofcom drama ranges: (international prefix, first local digits, city).
UK_RANGES = (
    ("20 7946", "0", "London"),
    ("161 496", "0", "Manchester"),
    ("113 496", "0", "Leeds"),
    ("117 496", "0", "Bristol"),
)
FREE_MAIL = (
    "gmail.com",
    "gmail.com",
    "gmail.com",
    "yahoo.com",
    "hotmail.com",
    "outlook.com",
    "icloud.com",
    "aol.com",
    "proton.me",
)
JOB_TITLES = (
    "VP of Sales",
    "Head of Marketing",
    "Marketing Manager",
    "Account Executive",
    "Sales Development Representative",
    "Chief Technology Officer",
    "Software Engineer",
    "Senior Software Engineer",
    "Engineering Manager",
    "Product Manager",
    "Director of Operations",
    "Operations Manager",
    "Chief Financial Officer",
    "Finance Director",
    "HR Business Partner",
    "Talent Acquisition Lead",
    "Customer Success Manager",
    "Data Analyst",
    "Head of Data",
    "Founder & CEO",
    "Procurement Specialist",
    "IT Director",
    "Office Manager",
    "Growth Marketer",
)


@dataclass(frozen=True)
class Contact:
    """One output row before formatting; ``created`` is the true (UTC) creation moment."""

    created: datetime
    email: str = ""
    first_name: str = ""
    last_name: str = ""
    phone: str = ""
    company: str = ""
    website: str = ""
    linkedin: str = ""
    job_title: str = ""
    city: str = ""
    country: str = ""
    source: str = ""
    created_text: str | None = None  # overrides the usual Create Date rendering


class Generator:
    def __init__(self, seed: int = SEED) -> None:
        self.rng = random.Random(seed)
        self.fakers: dict[str, Faker] = {}
        for offset, (locale, _, _) in enumerate(COUNTRIES.values()):
            fake = Faker(locale)
            fake.seed_instance(seed + offset)
            self.fakers[locale] = fake
        self.phone_pools = {
            "US": self._nanp_pool(US_AREAS),
            "CA": self._nanp_pool(CA_AREAS),
            "GB": self._uk_pool(),
        }
        self.companies = self._companies(420)
        self.used_emails: set[str] = set()

    def _nanp_pool(self, areas: dict[str, str]) -> list[tuple[str, str]]:
        pool = [(f"+1{area}55501{n:02d}", city) for area, city in areas.items() for n in range(100)]
        self.rng.shuffle(pool)
        return pool

    def _uk_pool(self) -> list[tuple[str, str]]:
        pool = [
            (f"+44{prefix.replace(' ', '')}{lead}{n:03d}", city)
            for prefix, lead, city in UK_RANGES
            for n in range(1000)
        ]
        self.rng.shuffle(pool)
        return pool

    def _companies(self, count: int) -> list[tuple[str, str]]:
        fake = self.fakers["en_US"]
        seen: dict[str, str] = {}
        while len(seen) < count:
            name = fake.company()
            slug = re.sub(r"[^a-z0-9]+", "-", name.lower().replace(" and ", " ")).strip("-")
            slug = re.sub(r"-(inc|llc|ltd|plc|group|and-sons|co)$", "", slug)
            domain = f"{slug}.{self.rng.choice(('com', 'com', 'com', 'io', 'net', 'co'))}"
            if domain not in seen.values():
                seen[name] = domain
        return list(seen.items())

    def moment(self, day: int | None = None) -> datetime:
        day = self.rng.randrange(DAYS) if day is None else day
        return START + timedelta(days=day, seconds=self.rng.randrange(86_400))

    def country(self) -> str:
        weights = [share for _, _, share in COUNTRIES.values()]
        return self.rng.choices(list(COUNTRIES), weights=weights)[0]

    def phone(self, country: str) -> tuple[str, str]:
        """A unique fictional number in a random human format, and its city."""
        e164, city = self.phone_pools[country].pop()
        number = phonenumbers.parse(e164)
        # Guard the "valid" promise: every number meant to be valid must pass the library.
        if not phonenumbers.is_valid_number(number):
            raise AssertionError(f"generated number {e164} is not valid")
        return self.format_phone(e164), city

    def format_phone(self, e164: str) -> str:
        number = phonenumbers.parse(e164)
        if e164.startswith("+44"):
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
        area, exchange, line = e164[2:5], e164[5:8], e164[8:]
        return self.rng.choice(
            (
                f"({area}) {exchange}-{line}",
                f"{area}.{exchange}.{line}",
                f"{area}-{exchange}-{line}",
                f"+1 {area} {exchange} {line}",
                f"+1 ({area}) {exchange}-{line}",
                f"{area}{exchange}{line}",
            )
        )

    def person(self) -> Contact:
        country = self.country()
        fake = self.fakers[COUNTRIES[country][0]]
        first, last = fake.first_name(), fake.last_name()
        company, domain = self.rng.choice(self.companies)
        phone, city = self.phone(country) if self.rng.random() < 0.7 else ("", "")
        if not city:
            city = self.rng.choice(self._cities(country))
        free = self.rng.random() < FREE_MAIL_SHARE
        email = self.email(first, last, domain, free=free)
        # Free-mail sign-ups often leave the company out; without one there is no website.
        employed = not free or self.rng.random() < 0.6
        return Contact(
            created=self.moment(),
            email=email,
            first_name=first,
            last_name=last,
            phone=phone,
            company=company if employed else "",
            website=self.website(domain) if employed and self.rng.random() < 0.75 else "",
            linkedin=self.linkedin(first, last) if self.rng.random() < 0.35 else "",
            job_title=self.rng.choice(JOB_TITLES) if self.rng.random() < 0.85 else "",
            city=city if self.rng.random() < 0.8 else "",
            country=COUNTRIES[country][1],
            source=self.rng.choice(SOURCES),
        )

    def _cities(self, country: str) -> list[str]:
        if country == "GB":
            return [city for _, _, city in UK_RANGES]
        return list((US_AREAS if country == "US" else CA_AREAS).values())

    def email(self, first: str, last: str, domain: str, *, free: bool) -> str:
        f, la = _ascii(first), _ascii(last)
        if free:
            local = self.rng.choice(
                (f"{f}.{la}{self.rng.randrange(10, 99)}", f"{f}{la}{self.rng.randrange(1, 999)}")
            )
            host = self.rng.choice(FREE_MAIL)
        else:
            local = self.rng.choice((f"{f}.{la}", f"{f[0]}{la}", f"{f}", f"{f}_{la}"))
            host = domain
        address = f"{local}@{host}"
        while address in self.used_emails:
            address = f"{local}{self.rng.randrange(2, 99)}@{host}"
        self.used_emails.add(address)
        return address

    def website(self, domain: str) -> str:
        return self.rng.choice(
            (
                f"https://www.{domain}",
                f"https://{domain}/",
                f"www.{domain}",
                domain,
                f"http://{domain}",
            )
        )

    def linkedin(self, first: str, last: str) -> str:
        handle = f"{_ascii(first)}-{_ascii(last)}-{self.rng.getrandbits(24):06x}"
        prefix = self.rng.choice(("https://www.linkedin.com/in/", "linkedin.com/in/"))
        return prefix + handle

    def messy_email(self, email: str) -> str:
        style = self.rng.randrange(4)
        if style == 0:
            return email.upper()
        if style == 1:
            local, host = email.split("@")
            return f"{local.title()}@{host.capitalize()}"
        if style == 2:
            return f"  {email} "
        return f" {email.upper()}"

    def repeat_of(self, original: Contact) -> Contact:
        """The same person arriving again from another source on another day."""
        day = (original.created - START).days
        later = list(range(day + 1, min(day + 21, DAYS)))
        earlier = list(range(max(day - 20, 0), day))
        again = self.moment(self.rng.choice(later or earlier))
        source = self.rng.choice([s for s in SOURCES if s != original.source])
        email = original.email.strip()
        if self.rng.random() < 0.5:
            email = self.rng.choice((email.upper(), email.lower(), email.capitalize()))
        phone = original.phone
        if phone and not phone.startswith("+44") and self.rng.random() < 0.6:
            digits = re.sub(r"\D", "", phone)[-10:]
            phone = self.format_phone("+1" + digits)
        return replace(
            original,
            created=again,
            email=email,
            phone=phone,
            source=source,
            job_title=original.job_title if self.rng.random() < 0.7 else "",
        )

    def phone_only(self) -> Contact:
        country = self.country()
        phone, city = self.phone(country)
        fake = self.fakers[COUNTRIES[country][0]]
        named = self.rng.random() < 0.6
        return Contact(
            created=self.moment(),
            first_name=fake.first_name() if named else "",
            last_name=fake.last_name() if named else "",
            phone=phone,
            city=city,
            source=self.rng.choice(SOURCES),
        )

    def name_company_only(self) -> Contact:
        fake = self.fakers["en_US"]
        return Contact(
            created=self.moment(),
            first_name=fake.first_name(),
            last_name=fake.last_name(),
            company=self.rng.choice(self.companies)[0],
            source=self.rng.choice(SOURCES),
        )

    def linkedin_only(self) -> Contact:
        fake = self.fakers["en_US"]
        return Contact(
            created=self.moment(),
            linkedin=self.linkedin(fake.first_name(), fake.last_name()),
            source=self.rng.choice(SOURCES),
        )

    def invalid_rows(self) -> list[Contact]:
        fake = self.fakers["en_US"]
        rows = [
            Contact(
                created=self.moment(),
                email=bad,
                first_name=fake.first_name(),
                last_name=fake.last_name(),
                source="Web Form",
            )
            for bad in BAD_EMAILS
        ]
        rows += [
            Contact(created=self.moment(), phone=bad, source=self.rng.choice(SOURCES))
            for bad in GARBAGE_PHONES
        ]
        rows += [
            Contact(
                created=self.moment(),
                first_name=fake.first_name(),
                last_name=fake.last_name(),
                source=self.rng.choice(SOURCES),
            )
            for _ in range(NAME_ONLY)
        ]
        rows.append(Contact(created=self.moment(), created_text=""))
        rows += [replace(self.person(), created_text=text) for text in BAD_DATES]
        return rows

    def contacts(self) -> list[Contact]:
        regular = [self.person() for _ in range(REGULAR)]
        regular = [
            replace(c, email=self.messy_email(c.email))
            if self.rng.random() < MESSY_EMAIL_SHARE
            else c
            for c in regular
        ]
        repeats = [self.repeat_of(c) for c in self.rng.sample(regular, REPEATS)]
        rows = [
            *regular,
            *repeats,
            *(self.phone_only() for _ in range(PHONE_ONLY)),
            *(self.name_company_only() for _ in range(NAME_COMPANY_ONLY)),
            *(self.linkedin_only() for _ in range(LINKEDIN_ONLY)),
            *self.invalid_rows(),
        ]
        rows.sort(key=lambda c: c.created)
        return self._vary_dates(rows)

    def _vary_dates(self, rows: list[Contact]) -> list[Contact]:
        """A handful of Create Dates in the other formats exports use (same instant)."""
        picks = self.rng.sample(
            [i for i, c in enumerate(rows) if c.created_text is None], 8 + 4 + 6
        )
        for n, i in enumerate(picks):
            moment = rows[i].created
            if n < 8:
                text = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
            elif n < 12:
                text = moment.astimezone(EASTERN).isoformat()
            else:
                text = moment.strftime("%m/%d/%Y %H:%M")
            rows[i] = replace(rows[i], created_text=text)
        return rows


def _ascii(name: str) -> str:
    return re.sub(r"[^a-z]", "", name.lower()) or "x"


def render(contacts: list[Contact]) -> list[list[str]]:
    rows: list[list[str]] = []
    for n, c in enumerate(contacts):
        created = (
            c.created.strftime("%Y-%m-%d %H:%M:%S") if c.created_text is None else c.created_text
        )
        # The deliberately blank row has no Record ID either: every field empty.
        blank = c == Contact(created=c.created, created_text="")
        rows.append(
            [
                "" if blank else str(40_812_300_001 + n * 7),
                c.email,
                c.first_name,
                c.last_name,
                c.phone,
                c.company,
                c.website,
                c.linkedin,
                c.job_title,
                c.city,
                c.country,
                c.source,
                created,
            ]
        )
    return rows


def write_sample(path: Path) -> list[Contact]:
    contacts = Generator().contacts()
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(HEADERS)
        writer.writerows(render(contacts))
    return contacts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"output CSV (default {OUT})")
    args = parser.parse_args(argv)
    contacts = write_sample(args.out)
    days = sorted({c.created.date() for c in contacts})
    print(
        f"wrote {len(contacts):,} synthetic contacts to {args.out}: {len(days)} days "
        f"{days[0]}..{days[-1]}, {REPEATS} repeat arrivals, {BROKEN} broken rows"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
