"""The screenshot of `relm serve`'s page in docs/img/: a running server, a query and a generation in headless
Chromium (Debian's chromium + chromium-driver, driven by selenium).

    relm serve DS --api-key KEY &                       # e.g. benchmarks/.cache/serve/pydocs
    python benchmarks/serve_screenshot.py http://127.0.0.1:8080 KEY --out docs/img/serve-page.png
"""

from __future__ import annotations

import argparse
import shutil
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("url")
    ap.add_argument("key")
    ap.add_argument("--query", default="json dumps indent sort keys")
    ap.add_argument("--prompt", default="The json module can write Python objects as")
    ap.add_argument("--max-tokens", type=int, default=40)
    ap.add_argument("--out", default="docs/img/serve-page.png")
    args = ap.parse_args(argv)

    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=webdriver.ChromeService(executable_path=shutil.which("chromedriver")),
                               options=options)
    try:
        wait = WebDriverWait(browser, 300)
        browser.get(args.url.rstrip("/") + "/")
        browser.find_element(By.ID, "key").send_keys(args.key)
        browser.execute_script("document.getElementById('key').dispatchEvent(new Event('change'))")
        wait.until(EC.text_to_be_present_in_element((By.ID, "info"), "passages"))
        browser.find_element(By.ID, "query").send_keys(args.query)
        browser.find_element(By.ID, "search-button").click()
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#hits .hit")))
        browser.find_element(By.ID, "prompt").send_keys(args.prompt)
        box = browser.find_element(By.ID, "max-tokens")
        box.clear()
        box.send_keys(str(args.max_tokens))
        browser.find_element(By.ID, "gen-button").click()
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#citations .cite")))
        browser.save_screenshot(args.out)
        print(f"wrote {args.out}")
    finally:
        browser.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
