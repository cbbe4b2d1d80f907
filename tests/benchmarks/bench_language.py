"""The language filter's detector on short captions: lingua (what ``language`` uses) against py3langid.

    .venv/bin/python tests/benchmarks/bench_language.py

144 alt-text style captions written by hand, 12 per language in 12 languages (the same scene in
each: a car, a coffee, a sunset ...), so the language of each is known. Accuracy: the detector's
first language is the written one. Speed: captions per CPU second on one thread (the captions x 20,
median of 3 after a warm-up); models loaded beforehand. py3langid is the baseline when installed
(``pip install py3langid``; it is not a dependency).
"""

# ruff: noqa: E402
from __future__ import annotations

import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from common import cpu_seconds, machine

CAPTIONS = {
    "en": [
        "a red car parked on the street",
        "woman holding a cup of coffee",
        "sunset over the mountains",
        "two dogs playing in the snow",
        "close-up of a fresh strawberry cake",
        "the old bridge at night",
        "man riding a bicycle in the city",
        "children reading books in a library",
        "stock photo of a business meeting",
        "view of the harbour from the hill",
        "black leather shoes for men",
        "a bowl of soup with bread",
    ],
    "de": [
        "ein rotes Auto parkt auf der Straße",
        "Frau hält eine Tasse Kaffee",
        "Sonnenuntergang über den Bergen",
        "zwei Hunde spielen im Schnee",
        "Nahaufnahme einer frischen Erdbeertorte",
        "die alte Brücke bei Nacht",
        "Mann fährt Fahrrad in der Stadt",
        "Kinder lesen Bücher in der Bibliothek",
        "Geschäftstreffen im Büro",
        "Blick auf den Hafen vom Hügel",
        "schwarze Lederschuhe für Herren",
        "eine Schüssel Suppe mit Brot",
    ],
    "fr": [
        "une voiture rouge garée dans la rue",
        "femme tenant une tasse de café",
        "coucher de soleil sur les montagnes",
        "deux chiens jouent dans la neige",
        "gros plan d'un gâteau aux fraises",
        "le vieux pont la nuit",
        "homme qui fait du vélo en ville",
        "des enfants lisent des livres à la bibliothèque",
        "réunion d'affaires au bureau",
        "vue sur le port depuis la colline",
        "chaussures en cuir noir pour homme",
        "un bol de soupe avec du pain",
    ],
    "es": [
        "un coche rojo aparcado en la calle",
        "mujer sosteniendo una taza de café",
        "puesta de sol sobre las montañas",
        "dos perros jugando en la nieve",
        "primer plano de una tarta de fresas",
        "el puente viejo de noche",
        "hombre montando en bicicleta por la ciudad",
        "niños leyendo libros en la biblioteca",
        "reunión de negocios en la oficina",
        "vista del puerto desde la colina",
        "zapatos de cuero negro para hombre",
        "un plato de sopa con pan",
    ],
    "it": [
        "una macchina rossa parcheggiata in strada",
        "donna che tiene una tazza di caffè",
        "tramonto sulle montagne",
        "due cani che giocano nella neve",
        "primo piano di una torta alle fragole",
        "il vecchio ponte di notte",
        "uomo in bicicletta in città",
        "bambini che leggono libri in biblioteca",
        "riunione di lavoro in ufficio",
        "vista del porto dalla collina",
        "scarpe in pelle nera da uomo",
        "una ciotola di zuppa con il pane",
    ],
    "pt": [
        "um carro vermelho estacionado na rua",
        "mulher segurando uma xícara de café",
        "pôr do sol sobre as montanhas",
        "dois cachorros brincando na neve",
        "close de um bolo de morango",
        "a ponte velha à noite",
        "homem andando de bicicleta na cidade",
        "crianças lendo livros na biblioteca",
        "reunião de negócios no escritório",
        "vista do porto a partir da colina",
        "sapatos de couro preto masculino",
        "uma tigela de sopa com pão",
    ],
    "nl": [
        "een rode auto geparkeerd op straat",
        "vrouw met een kop koffie",
        "zonsondergang boven de bergen",
        "twee honden spelen in de sneeuw",
        "close-up van een verse aardbeientaart",
        "de oude brug bij nacht",
        "man fietst door de stad",
        "kinderen lezen boeken in de bibliotheek",
        "zakelijke bijeenkomst op kantoor",
        "uitzicht op de haven vanaf de heuvel",
        "zwarte leren schoenen voor heren",
        "een kom soep met brood",
    ],
    "ru": [
        "красная машина припаркована на улице",
        "женщина держит чашку кофе",
        "закат над горами",
        "две собаки играют в снегу",
        "клубничный торт крупным планом",
        "старый мост ночью",
        "мужчина едет на велосипеде по городу",
        "дети читают книги в библиотеке",
        "деловая встреча в офисе",
        "вид на гавань с холма",
        "черные кожаные туфли для мужчин",
        "тарелка супа с хлебом",
    ],
    "zh": [
        "停在街上的红色汽车",
        "拿着一杯咖啡的女人",
        "山上的日落",
        "两只狗在雪地里玩耍",
        "新鲜草莓蛋糕特写",
        "夜晚的老桥",
        "在城市里骑自行车的男人",
        "孩子们在图书馆看书",
        "办公室里的商务会议",
        "从山上看港口",
        "男士黑色皮鞋",
        "一碗汤和面包",
    ],
    "ja": [
        "通りに停めてある赤い車",
        "コーヒーカップを持つ女性",
        "山に沈む夕日",
        "雪の中で遊ぶ二匹の犬",
        "いちごケーキのクローズアップ",
        "夜の古い橋",
        "街で自転車に乗る男性",
        "図書館で本を読む子供たち",
        "オフィスでのビジネス会議",
        "丘から見た港の景色",
        "メンズの黒い革靴",
        "パンとスープ",
    ],
    "pl": [
        "czerwony samochód zaparkowany na ulicy",
        "kobieta trzymająca filiżankę kawy",
        "zachód słońca nad górami",
        "dwa psy bawiące się w śniegu",
        "zbliżenie tortu truskawkowego",
        "stary most nocą",
        "mężczyzna jadący na rowerze po mieście",
        "dzieci czytające książki w bibliotece",
        "spotkanie biznesowe w biurze",
        "widok na port ze wzgórza",
        "czarne skórzane buty męskie",
        "miska zupy z chlebem",
    ],
    "tr": [
        "sokağa park edilmiş kırmızı bir araba",
        "bir fincan kahve tutan kadın",
        "dağların üzerinde gün batımı",
        "karda oynayan iki köpek",
        "taze çilekli pastanın yakın çekimi",
        "gece eski köprü",
        "şehirde bisiklet süren adam",
        "kütüphanede kitap okuyan çocuklar",
        "ofiste iş toplantısı",
        "tepeden limanın görünümü",
        "erkekler için siyah deri ayakkabı",
        "ekmekli bir kase çorba",
    ],
}


def lingua():
    from curate.stages.language import Language

    stage = Language(languages=("en",))
    stage.setup()
    return lambda text: stage.detector.compute_language_confidence_values(text)[0].language.iso_code_639_1.name.lower()


def py3langid():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return lambda text: ident.classify(text)[0]


def main() -> None:
    items = [(lang, text) for lang, texts in CAPTIONS.items() for text in texts]
    texts = [text for _, text in items] * 20
    print(machine(), f"{len(items)} captions in {len(CAPTIONS)} languages")
    rates = {}
    for name, build in (("lingua", lingua), ("py3langid", py3langid)):
        try:
            detect = build()
        except ImportError:
            print(f"{name}: not installed, skipped")
            continue
        wrong = [(lang, text, detect(text)) for lang, text in items if detect(text) != lang]
        rates[name] = len(texts) / cpu_seconds(lambda detect=detect: [detect(t) for t in texts], 3)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10
        print(
            f"{name}: {len(items) - len(wrong)}/{len(items)} right, {rates[name]:,.0f} captions/s/core, peak RSS so far {rss} MiB"
        )
        for lang, text, got in wrong:
            print(f"    {lang} read as {got}: {text}")
    if len(rates) == 2:
        print(f"speed lingua / py3langid: {rates['lingua'] / rates['py3langid']:.2f}")


if __name__ == "__main__":
    main()
