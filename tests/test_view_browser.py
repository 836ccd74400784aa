"""gal-view in a real browser: headless Chromium (Debian's chromium + chromium-driver) driven with Selenium.
Search by id, click a neighbour, click a point of the map, apply a filter, download the selection; a screenshot
is saved and checked not blank.  Skips, saying why, only where no browser can be had."""
from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest

from test_view import Viewer, brute_force, make_world

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")

from selenium.common.exceptions import TimeoutException, WebDriverException  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

WAIT_S = 60


def _browser(download_folder):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("no headless browser: install Debian's chromium and chromium-driver "
                    "(apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1500,1000", "--disable-extensions", "--no-first-run"):
        options.add_argument(argument)
    options.add_experimental_option("prefs", {"download.default_directory": str(download_folder),
                                              "download.prompt_for_download": False})
    try:
        return webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    except WebDriverException as exc:
        pytest.skip(f"chromium is installed but does not start: {' '.join(str(exc).split())[:200]}")


def _tile_ids(driver, kind):
    """object_ids of the shown tiles, read in one go (the page replaces them while a search runs)."""
    ids = driver.execute_script(f"return [...document.querySelectorAll('#results .tile.{kind}')]"
                                ".map(e => e.dataset.id);")
    return [int(v) for v in ids]


def _wait_for_query(driver, object_id, k):
    def shown(d):
        queries = _tile_ids(d, "query")
        return queries == [object_id] and len(_tile_ids(d, "neighbour")) == k

    try:
        WebDriverWait(driver, WAIT_S).until(shown)
    except TimeoutException:
        error = driver.find_element(By.ID, "error").text
        raise AssertionError(f"no neighbours of {object_id} shown (page error: {error!r})") from None


def test_search_click_filter_download_and_screenshot(tmp_path_factory, trained_run, tmp_path):
    world = make_world(tmp_path_factory, trained_run)
    folder = world["folder"]
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver = _browser(downloads)
    server = Viewer(folder / "emb.parquet", "--images", folder / "sim.arrow", "--map", folder / "map.parquet",
                    "--label", "morph_class", "--columns", "z_true", "-k", 8)
    try:
        driver.get(server.url)
        WebDriverWait(driver, WAIT_S).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
        # search by id
        driver.find_element(By.ID, "ids").send_keys("3")
        driver.find_element(By.ID, "search-button").click()
        _wait_for_query(driver, 3, 8)
        assert _tile_ids(driver, "neighbour") == brute_force(world, 3, 8)[0]
        # click a neighbour: it becomes the query
        second = _tile_ids(driver, "neighbour")[1]
        driver.find_elements(By.CSS_SELECTOR, "#results .tile.neighbour")[1].click()
        _wait_for_query(driver, second, 8)
        assert _tile_ids(driver, "neighbour") == brute_force(world, second, 8)[0]
        # click a point of the map: a search for it (the most isolated point, so that the click is unambiguous)
        xy = world["map"]
        ids = xy.column("object_id").to_numpy()
        points = np.column_stack([xy.column("map_x").to_numpy(), xy.column("map_y").to_numpy()])
        gaps = np.linalg.norm(points[:, None] - points[None], axis=2) + np.diag(np.full(len(ids), np.inf))
        isolation = np.where(np.isin(ids, [3, second]), -1, gaps.min(axis=1))
        target = int(ids[np.argmax(isolation)])
        x, y = driver.execute_script(f"return window.galView.screenOf({target});")
        canvas = driver.find_element(By.ID, "map")
        ActionChains(driver).move_to_element_with_offset(canvas, int(round(x - canvas.size["width"] / 2)),
                                                         int(round(y - canvas.size["height"] / 2))).click().perform()
        WebDriverWait(driver, WAIT_S).until(lambda d: len(_tile_ids(d, "query")) == 1
                                            and _tile_ids(d, "query")[0] != second)
        clicked = _tile_ids(driver, "query")[0]
        assert clicked == target
        assert _tile_ids(driver, "neighbour") == brute_force(world, target, 8)[0]
        # a filter restricts the map, and the search is redone within it
        expression = 'morph_class == "disk"'
        driver.find_element(By.ID, "filter").send_keys(expression)
        driver.find_element(By.ID, "apply-filter").click()
        disk = np.array([c == "disk" for c in world["emb"].column("morph_class").to_pylist()])
        WebDriverWait(driver, WAIT_S).until(
            lambda d: d.find_element(By.ID, "selection-count").text.startswith(f"{disk.sum()} of 160"))
        expected = brute_force(world, clicked, 8, disk)[0]
        WebDriverWait(driver, WAIT_S).until(lambda d: _tile_ids(d, "neighbour") == expected)
        # download the selection
        driver.find_element(By.ID, "download").click()
        target_file = downloads / "selection.csv"
        deadline = time.monotonic() + WAIT_S
        while not target_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert target_file.exists(), os.listdir(downloads)
        lines = target_file.read_text().splitlines()
        assert lines[0] == "object_id"
        assert [int(v) for v in lines[1:]] == world["emb"].column("object_id").to_numpy()[disk].tolist()
        # a bad filter shows its error on the page and changes nothing
        driver.find_element(By.ID, "filter").send_keys(" and")
        driver.find_element(By.ID, "apply-filter").click()
        WebDriverWait(driver, WAIT_S).until(lambda d: d.find_element(By.ID, "error").is_displayed())
        assert "ends too early" in driver.find_element(By.ID, "error").text
        # the pictures have loaded: a screenshot that is not blank
        WebDriverWait(driver, WAIT_S).until(lambda d: d.execute_script(
            "return [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"))
        shot = tmp_path / "gal-view.png"
        assert driver.save_screenshot(str(shot))
        from PIL import Image

        picture = np.asarray(Image.open(shot).convert("RGB"))
        assert picture.shape[0] > 500 and picture.shape[1] > 1000
        colours = np.unique(picture.reshape(-1, 3), axis=0)
        assert len(colours) > 500 and picture.std() > 30, (len(colours), picture.std())
        if os.environ.get("GALTOOLS_VIEW_SCREENSHOT"):
            shutil.copy(shot, os.environ["GALTOOLS_VIEW_SCREENSHOT"])
    finally:
        driver.quit()
        code, err = server.stop()
    assert code == 0, err
