"""A synthetic registry (Cyrillic) and survey (Latin) about partly the same people, with no
shared identifier: the project's own test set for fuzzy linkage (tests, bench, demo, example).

The registry writes names and streets in Ukrainian Cyrillic and dates as dd.mm.yyyy. The survey
writes them in Latin letters under one of three transliterations (the 2010 national system,
Russian-style spellings of given names such as Aleksandr for Олександр, and an informal one
with x, h and w), with typos, some dates as yyyy-mm-dd with day and month swapped or one digit
wrong, and missing values. Every person has a hidden id: `truth` gives the true pairs of
record ids, so a table over the true links can be computed independently.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


def _words(text: str) -> list[str]:
    return text.split()


MALE = _words(
    """
Олександр Андрій Сергій Дмитро Михайло Юрій Іван Володимир Василь Микола Петро Олексій
Віктор Григорій Богдан Тарас Максим Євген Павло Ярослав Роман Степан Віталій Ігор Костянтин
"""
)
FEMALE = _words(
    """
Олена Ольга Наталія Тетяна Ірина Світлана Катерина Марія Юлія Оксана Людмила Анна Валентина
Галина Надія Софія Вікторія Ганна Христина Євгенія Лариса Дарина Зоряна Жанна
"""
)
SURNAMES = _words(
    """
Мельник Шевченко Коваленко Бондаренко Бойко Ткаченко Кравченко Ковальчук Коваль Олійник
Шевчук Поліщук Іваненко Ткачук Савченко Бондар Марченко Руденко Мороз Лисенко Петренко
Клименко Павленко Кравчук Кузьменко Пономаренко Савчук Василенко Левченко Харченко Карпенко
Гаврилюк Литвиненко Мельничук Гончаренко Романенко Приходько Сидоренко Щербак Юрченко
Захарченко Федоренко Ковальов Гнатюк Мазур Костенко Кириленко Данилюк Кушнір Хоменко Жук
Гуменюк Остапенко Дячук Лук'яненко Гребенюк Тимошенко Яковенко Голуб Стасюк Жовнір
"""
)
STEMS = _words(
    """
Бондар Гончар Кравець Мірошни Пасічни Рибал Стельмах Теслен Шинкар Ярош Дорош Гриць Левч
Мирош Тимош Федор Харит Юрч Остап Кирил Лук Мазур Сав Ткач Мороз Глушк Дід Кузь Бабич Білик
Вовк Гуц Дем Жура Зінч Іщ Кобзар Лавр Март Назар Олекс Паль Рад Семен Троц Фом Хом Цап Чорн
Шапов Юхим Яків Бур Гер Дан Євтуш Запор Ковтун Литв Матв Нест Оліш Прок
"""
)
SURNAMES += [
    s + end for s in STEMS for end in ("енко", "ук", "ишин", "ович", "ченко", "ак", "юк", "ський")
]
STREETS = _words(
    """
Шевченка Франка Хрещатик Соборна Героїв Миру Січових Стрільців Лесі Українки Грушевського
Гагаріна Садова Шкільна Польова Лісова Центральна Зелена Молодіжна Набережна Козацька
Вишнева
"""
)
RUSSIAN = {
    "Олександр": "Aleksandr", "Андрій": "Andrey", "Сергій": "Sergey", "Дмитро": "Dmitriy",
    "Михайло": "Mikhail", "Юрій": "Yuriy", "Олексій": "Aleksey", "Григорій": "Grigoriy",
    "Микола": "Nikolay", "Євген": "Evgeniy", "Олена": "Elena", "Наталія": "Natalya",
    "Катерина": "Ekaterina", "Ганна": "Anna", "Ярослав": "Yaroslav", "Петро": "Petr",
}  # fmt: skip
_NATIONAL = dict(zip("абвгґдеєжзиіїйклмнопрстуфхцчшщьюя'", [
    "a", "b", "v", "h", "g", "d", "e", "ie", "zh", "z", "y", "i", "i", "i", "k", "l", "m", "n",
    "o", "p", "r", "s", "t", "u", "f", "kh", "ts", "ch", "sh", "shch", "", "iu", "ia", "",
], strict=True))  # fmt: skip
_INITIAL = {"є": "ye", "ї": "yi", "й": "y", "ю": "yu", "я": "ya"}  # national, word-initial
_INFORMAL = {**_NATIONAL, "г": "g", "х": "h", "и": "i", "й": "j", "є": "je", "ю": "ju", "я": "ja"}
_INFORMAL.update({"ш": "sh", "щ": "sch", "ц": "c", "в": "w", "ї": "ji"})
SURNAME_POWER = 0.5  # surnames are spread thinly (the top one ~1.5 % of people)
DISTRICTS = ["d1", "d2", "d3"]
EMPLOYMENT = ["employed", "unemployed", "inactive"]
DATE_LEFT, DATE_RIGHT = "%d.%m.%Y", "%Y-%m-%d"


def translit(text: str, scheme: str) -> str:
    """Transliterate Ukrainian Cyrillic with one of the schemes "national" or "informal"."""
    table = _NATIONAL if scheme == "national" else _INFORMAL
    out, start = [], True
    for char in text:
        low = char.lower()
        if low not in table:
            out.append(char)
            start = not char.isalpha()
            continue
        latin = _INITIAL.get(low, table[low]) if start and scheme == "national" else table[low]
        latin = latin.replace("ks", "x") if scheme == "informal" else latin
        out.append(latin.capitalize() if char != low else latin)
        start = False
    return "".join(out).replace("ks", "x" if scheme == "informal" else "ks")


def _typo(text: str, rng: np.random.Generator) -> str:
    if len(text) < 4:
        return text
    k = int(rng.integers(1, len(text) - 1))
    kind = rng.integers(3)
    if kind == 0:  # drop a letter
        return text[:k] + text[k + 1 :]
    if kind == 1:  # swap two letters
        return text[: k - 1] + text[k] + text[k - 1] + text[k + 1 :]
    return text[:k] + "aeiountrs"[int(rng.integers(9))] + text[k + 1 :]  # substitute


def _zipf(items: list[str], size: int, rng: np.random.Generator, power: float = 0.9):
    weights = 1.0 / np.arange(1, len(items) + 1) ** power
    return rng.choice(np.array(items, dtype=object), size, p=weights / weights.sum())


def name_frequencies(items: list[str], power: float = 0.9) -> dict[str, float]:
    """The public frequency list of a name list (what an attacker is assumed to know)."""
    weights = 1.0 / np.arange(1, len(items) + 1) ** power
    return dict(zip(items, weights / weights.sum(), strict=True))


@dataclass
class LinkageSet:
    registry: pd.DataFrame  # record_id, surname, given_name, birth_date, sex, street, district
    survey: pd.DataFrame  # record_id, last_name, first_name, dob, sex, address, employment
    truth: pd.DataFrame  # registry_id, survey_id of the true pairs


def people(size: int, rng: np.random.Generator) -> pd.DataFrame:
    sex = rng.choice(np.array(["m", "f"]), size)
    given = np.where(sex == "m", _zipf(MALE, size, rng), _zipf(FEMALE, size, rng))
    surname = _zipf(SURNAMES, size, rng, SURNAME_POWER)
    female = (sex == "f") & pd.Series(surname).str.endswith(("ов", "ев")).to_numpy()
    surname = np.where(female, surname + "а", surname)
    born = np.datetime64("1940-01-01") + rng.integers(0, 365 * 65, size).astype("timedelta64[D]")
    street = _zipf(STREETS, size, rng, 0.5)
    house = rng.integers(1, 120, size)
    return pd.DataFrame(
        {"surname": surname, "given_name": given, "born": born, "sex": sex,
         "street": [f"вул. {s}, {h}" for s, h in zip(street, house, strict=True)]}
    )  # fmt: skip


def _survey_record(person: pd.Series, rng: np.random.Generator, errors: float) -> dict:
    scheme = ["national", "russian", "informal"][int(rng.choice(3, p=[0.55, 0.25, 0.2]))]
    given = person.given_name
    if scheme == "russian" and given in RUSSIAN:
        first = RUSSIAN[given]
    else:
        first = translit(given, "informal" if scheme == "informal" else "national")
    last = translit(person.surname, "informal" if scheme == "informal" else "national")
    if rng.random() < errors:
        first = _typo(first, rng)
    if rng.random() < errors:
        last = _typo(last, rng)
    born = pd.Timestamp(person.born)
    dob = born.strftime(DATE_RIGHT)
    roll = rng.random()
    if roll < errors / 4 and born.day <= 12 and born.day != born.month:
        dob = f"{born.year:04d}-{born.day:02d}-{born.month:02d}"  # day and month swapped
    elif roll < errors / 2:
        digits = list(dob.replace("-", ""))
        k = int(rng.choice([2, 3, 5, 7]))  # a slip in the year's last digits, month or day
        digits[k] = str((int(digits[k]) + 1 + int(rng.integers(8))) % 10)
        dob = "".join(digits)
        dob = f"{dob[:4]}-{dob[4:6]}-{dob[6:]}"  # may be an invalid date: missing evidence
    elif roll < errors / 2 + 0.02:
        dob = ""
    street = person.street.replace("вул. ", "")
    address = translit(street, "informal" if scheme == "informal" else "national")
    address = address if rng.random() < 0.5 else address.replace(",", " St,")
    address = "" if rng.random() < 0.1 else address
    sex = "" if rng.random() < 0.02 else person.sex.upper()
    return {"last_name": last, "first_name": first, "dob": dob, "sex": sex, "address": address}


def make(
    registry: int = 4000, survey: int = 3500, shared: int = 3000, seed: int = 20261205,
    errors: float = 0.2,
) -> LinkageSet:  # fmt: skip
    """`shared` people in both; `errors` is the rate of typos per name and of date errors."""
    rng = np.random.default_rng(seed)
    crowd = people(registry + survey - shared, rng)
    left = crowd.iloc[:registry].reset_index(drop=True)
    right_people = crowd.iloc[registry - shared :].reset_index(drop=True)
    left_ids = rng.permutation(10 * registry)[:registry] + 1
    right_ids = rng.permutation(10 * survey)[:survey] + 1
    frame = pd.DataFrame(
        {"record_id": left_ids, "surname": left.surname, "given_name": left.given_name,
         "birth_date": pd.to_datetime(left.born).dt.strftime(DATE_LEFT), "sex": left.sex,
         "street": left.street, "district": rng.choice(DISTRICTS, registry, p=[0.5, 0.3, 0.2])}
    )  # fmt: skip
    blank = rng.random(registry) < 0.01
    frame.loc[blank, "birth_date"] = ""
    rows = [_survey_record(p, rng, errors) for p in right_people.itertuples(index=False)]
    answers = pd.DataFrame(rows)
    answers.insert(0, "record_id", right_ids)
    answers["employment"] = rng.choice(EMPLOYMENT, survey, p=[0.45, 0.35, 0.2])
    truth = pd.DataFrame(
        {"registry_id": left_ids[registry - shared :], "survey_id": right_ids[:shared]}
    )
    order_l, order_r = rng.permutation(registry), rng.permutation(survey)
    return LinkageSet(
        frame.iloc[order_l].reset_index(drop=True),
        answers.iloc[order_r].reset_index(drop=True),
        truth,
    )


JOB_FIELDS = [
    {"left": "surname", "right": "last_name", "kind": "name"},
    {"left": "given_name", "right": "first_name", "kind": "name"},
    {"left": "birth_date", "right": "dob", "kind": "date",
     "left_format": DATE_LEFT, "right_format": DATE_RIGHT},
    {"left": "sex", "right": "sex", "kind": "exact"},
    {"left": "street", "right": "address", "kind": "text"},
]  # fmt: skip
