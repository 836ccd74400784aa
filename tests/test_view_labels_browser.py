"""gal-view --labels in a real headless browser: the "interesting" button writes a mark to the labels file and the
"Label these next" panel refreshes (skipped without chromium and chromedriver, as the other browser test)."""
from __future__ import annotations

from test_ood_rank import Viewer, planted, write_cutouts, write_emb
from test_view_browser import WAIT_S, _browser, By, WebDriverWait  # skips here without selenium
from galtools.ood.labels import read_labels


def test_the_buttons_write_marks_and_refresh_the_proposals(tmp_path):
    vectors, truth = planted(11, background=200)
    emb = write_emb(tmp_path / "emb.parquet", vectors, truth)
    images = write_cutouts(tmp_path / "cutouts.arrow", len(vectors))
    labels = tmp_path / "marks.csv"
    driver = _browser(tmp_path)
    server = Viewer(emb, "--images", images, "--labels", labels)
    try:
        driver.get(server.url)
        WebDriverWait(driver, WAIT_S).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
        tiles = driver.find_elements(By.CSS_SELECTOR, "#proposals .tile")
        assert len(tiles) == 20
        first = tiles[0].get_attribute("data-id")
        stamp = driver.find_element(By.TAG_NAME, "body").get_attribute("data-proposals")
        tiles[0].find_element(By.CSS_SELECTOR, "button.mark-yes").click()
        WebDriverWait(driver, WAIT_S).until(
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-proposals") != stamp)
        assert "1 interesting, 0 not" in driver.find_element(By.ID, "label-counts").text
        shown = [t.get_attribute("data-id") for t in driver.find_elements(By.CSS_SELECTOR, "#proposals .tile")]
        assert first not in shown and len(shown) == 20
        second = shown[0]
        stamp = driver.find_element(By.TAG_NAME, "body").get_attribute("data-proposals")
        driver.find_element(By.CSS_SELECTOR, f"#proposals .tile[data-id='{second}'] button.mark-no").click()
        WebDriverWait(driver, WAIT_S).until(
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-proposals") != stamp)
        assert "1 interesting, 1 not" in driver.find_element(By.ID, "label-counts").text
        assert driver.find_element(By.ID, "error").text == ""
    finally:
        driver.quit()
        server.kill()
    marks = read_labels(str(labels))
    assert marks.ids == [first, second] and marks.values.tolist() == [True, False]
