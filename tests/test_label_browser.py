"""The labelling page in a real headless Chromium: 20 frames labelled by keyboard only."""

from __future__ import annotations

import contextlib
import importlib.util
import shutil

import cv2
import numpy as np
import pytest

from tests.test_label import LABELS, copy_of, label_server, log_lines, make_field

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
MISSING = [name for name, ok in [("chromium", CHROMIUM), ("chromedriver (chromium-driver)",
                                                          CHROMEDRIVER),
                                 ("selenium", importlib.util.find_spec("selenium"))] if not ok]
pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"{' and '.join(MISSING)} not installed (make test installs chromium "
                          "and chromium-driver with apt-get as root; selenium is in the dev extra)")
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-dev-shm-usage"]


@contextlib.contextmanager
def chrome(tmp_path):
    """Debian's chromium under Debian's chromedriver, headless, with a fresh profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,900"]:
        opts.add_argument(flag)
    # The Debian driver by its path: Selenium Manager would try to download one otherwise.
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def _keys(driver, *keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(*keys).perform()


def _wait_text(driver, element_id: str, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 10).until(
        lambda d: d.find_element(By.ID, element_id).text.startswith(text),
        message=f"#{element_id} never began with {text!r}")


def _screenshot(driver, path, width: int) -> np.ndarray:
    driver.set_window_size(width, 900)
    driver.execute_script("window.scrollTo(0, 0)")
    assert driver.save_screenshot(str(path))
    return cv2.imread(str(path), cv2.IMREAD_COLOR)


def _check_dataset(root, ds, paths: list[str], want: dict[str, str]) -> None:
    """Exactly the 20 labelled frames copied, each with its sidecar; 22 decisions logged."""
    for p, label in want.items():
        dst = copy_of(ds, label, p)
        assert dst.read_bytes() == (root / p).read_bytes(), p
        assert dst.with_suffix(".json").read_bytes() == (root / p).with_suffix(".json") \
            .read_bytes()
    assert sorted(x.relative_to(ds).as_posix() for x in ds.rglob("*.jpg")) == \
        sorted(copy_of(ds, lab, p).relative_to(ds).as_posix() for p, lab in want.items())
    log = log_lines(ds)
    assert {r["who"] for r in log} == {"page"} and len(log) == 22
    assert {(r["path"], r["decision"], r["label"]) for r in log} == {
        *((p, "label", lab) for p, lab in want.items()), (paths[8], "skip", None),
        (paths[21], "unknown", None)}


def test_label_20_frames_by_keyboard(tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    root, ds = tmp_path / "field", tmp_path / "ds"
    paths = sorted(make_field(root, n=24))  # the page's order
    index = {p: int(p[-12:-4]) for p in paths}  # frame i's model top-1 is LABELS[i % 3]
    want: dict[str, str] = {}
    with label_server(root, ds) as url, chrome(tmp_path) as driver:
        driver.get(url)
        _wait_text(driver, "progress", "0 / 24 decided")
        _keys(driver, Keys.ENTER, Keys.ENTER, " ", Keys.ENTER)  # accept 4 suggestions
        want.update({p: LABELS[index[p] % 3] for p in paths[0:4]})
        _keys(driver, "2", "2", "2", "2")
        want.update({p: "square" for p in paths[4:8]})
        _keys(driver, "s")  # paths[8] skipped
        _keys(driver, "1", "3", "1", "3", "1", "3")
        want.update({p: LABELS[0 if k % 2 == 0 else 2] for k, p in enumerate(paths[9:15])})
        _wait_text(driver, "progress", "15 / 24 decided (14 labelled, 0 unknown, 1 skipped)")
        # Bulk: select six with x, moving by j and the arrow key, then b and a class.
        _keys(driver, "x", "j", "x", Keys.ARROW_RIGHT, "x", "j", "x", "j", "x", "j", "x")
        _wait_text(driver, "progress", "15 / 24 decided (14 labelled, 0 unknown, 1 skipped)"
                   " · 24 shown · 6 selected")
        _keys(driver, "b", "3")
        want.update({p: "triangle" for p in paths[15:21]})
        _keys(driver, "j", "u")  # paths[21] unknown
        _wait_text(driver, "progress", "22 / 24 decided (20 labelled, 1 unknown, 1 skipped)")
        assert len(driver.find_elements(By.CSS_SELECTOR, ".card.d-label")) == 20
        _keys(driver, "p")  # the full-size preview of the frame under the cursor
        WebDriverWait(driver, 10).until(lambda d: d.execute_script(
            "const i = document.querySelector('#preview img'); return i.complete && "
            "!document.getElementById('preview').hidden && i.naturalWidth") == 64)
        assert driver.find_element(By.CSS_SELECTOR, "#preview div").text == paths[22]
        _keys(driver, "p")
        wide = _screenshot(driver, tmp_path / "label-1280.png", 1280)
        narrow = _screenshot(driver, tmp_path / "label-390.png", 390)

        driver.refresh()  # the page shows what is already labelled
        _wait_text(driver, "progress", "22 / 24 decided (20 labelled, 1 unknown, 1 skipped)")
        cards = driver.find_elements(By.CSS_SELECTOR, ".card.d-label .dec")
        assert sorted(c.get_attribute("textContent") for c in cards) == sorted(want.values())
        cursor = driver.find_element(By.CSS_SELECTOR, ".card.cursor")
        assert cursor.get_attribute("title") == paths[22]  # the first undecided
        # Filters: device pi-2 and confidence >= 0.7 leave frames 17, 19, 21 and 23.
        driver.find_element(By.CSS_SELECTOR, "#f-device option[value='pi-2']").click()
        low = driver.find_element(By.ID, "f-min")
        low.clear()
        low.send_keys("0.7", Keys.ENTER)
        shown = [c.get_attribute("title") for c in driver.find_elements(By.CLASS_NAME, "card")]
        assert [index[p] for p in shown] == [17, 19, 21, 23]
        first, _, third, _ = driver.find_elements(By.CLASS_NAME, "card")
        ActionChains(driver).click(first).key_down(Keys.SHIFT).click(third) \
            .key_up(Keys.SHIFT).perform()  # a range by shift-click
        _wait_text(driver, "progress", "22 / 24 decided (20 labelled, 1 unknown, 1 skipped)"
                   " · 4 shown · 3 selected")
        driver.find_element(By.CSS_SELECTOR, "#f-reason option[value='disagreement']").click()
        shown = [c.get_attribute("title") for c in driver.find_elements(By.CLASS_NAME, "card")]
        assert [index[p] for p in shown] == [21]  # any of a frame's reasons matches

    _check_dataset(root, ds, paths, want)
    for img, width in ((wide, 1280), (narrow, 390)):
        assert img is not None and abs(img.shape[1] - width) <= 20, img.shape
        # Non-trivial: many colours (thumbnails, text), not one flat fill.
        colours = len(np.unique(img.reshape(-1, 3), axis=0))
        assert colours > 200 and img.std() > 20, (width, colours, img.std())

