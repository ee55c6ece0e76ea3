"""`/dashboard/`: the web dashboard, plain static files (HTML, CSS, a little JavaScript).

The files hold no data, so they are served to anyone; every number on the page comes from
the REST API, called by the page with the credential the user typed into its login box
(kept in the tab's sessionStorage), under the same auth as any other client. `/dashboard`
itself redirects here (Starlette adds the slash).

The page renders job data (params, results, error messages: anyone's text) only as text,
never as markup, and the Content-Security-Policy below allows no inline or foreign script,
so a hostile value cannot run in an operator's browser.
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.responses import Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC = Path(__file__).resolve().parent / "static"

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidate each load, so an upgraded server never runs with a stale script.
    "Cache-Control": "no-cache",
}


class DashboardFiles(StaticFiles):
    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(SECURITY_HEADERS)
        return response


routes = [Mount("/dashboard", DashboardFiles(directory=STATIC, html=True), name="dashboard")]
