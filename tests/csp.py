"""Content-Security-Policy violations in Chromium, as the pages' own events and console report them.

Every browser context a test opens through ``tests/test_browser.py: open_page`` is watched
(:func:`watch`), every page in it included, and a test during which any page broke the policy
fails (the autouse fixture ``no_csp_violations`` in tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import Iterator

# What pages reported since the current test began: "<page url>: <what was blocked>".
violations: list[str] = []

REPORT_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (event) => window.reportCspViolation(
  `${event.effectiveDirective} refused ${event.blockedURI || "inline"} at ${event.sourceFile}:${event.lineNumber}`));
"""


def watch(context) -> None:
    """Record the violations of every page of ``context``, those opened later too."""
    context.expose_binding(
        "reportCspViolation", lambda source, text: violations.append(f"{source['page'].url}: {text}")
    )
    context.add_init_script(REPORT_VIOLATIONS)
    # Chromium also logs each one ("Refused to … because it violates the following Content
    # Security Policy directive"), including those no page script can hear of.
    context.on(
        "console",
        lambda message: (
            "Content Security Policy" in message.text
            and violations.append(f"{message.page and message.page.url}: {message.text}")
        ),
    )


def fail_on_violations() -> Iterator[None]:
    """Around one test: fail it if any watched page broke the policy meanwhile."""
    violations.clear()
    yield
    found, violations[:] = list(violations), []
    assert not found, "Content-Security-Policy violations:\n" + "\n".join(found)
