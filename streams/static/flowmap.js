// The worker's data-flow map page (streams/web.py serves it at /flowaudit/map/).
// The token is never put in a URL the server sees: it comes in the fragment (#token=...), which a
// browser does not send, or from the form; it is kept in this tab's sessionStorage, taken off the
// address bar, and sent only in the Authorization header of the request for the map's SVG.
"use strict";
(function () {
  const KEY = "flowaudit-web-token";
  const form = document.getElementById("period");
  const status = document.getElementById("status");
  const map = document.getElementById("map");

  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("token")) {
    sessionStorage.setItem(KEY, fragment.get("token"));
  }
  history.replaceState(null, "", location.pathname + location.search);
  const query = new URLSearchParams(location.search);
  for (const name of ["since", "until"]) {
    form.elements[name].value = query.get(name) || "";
  }

  function say(text, state) {
    status.textContent = text;
    status.className = state === "error" ? "error" : "";
    map.dataset.state = state;
  }

  function askForToken(text) {
    sessionStorage.removeItem(KEY);
    document.getElementById("token-field").hidden = false;
    say(text, "error");
  }

  async function draw() {
    const typed = form.elements.token.value.trim();
    if (typed) {
      sessionStorage.setItem(KEY, typed);
      form.elements.token.value = "";
    }
    const token = sessionStorage.getItem(KEY);
    if (!token) {
      askForToken("Enter the worker's web token (FLOWAUDIT_WEB_TOKEN, or web_token in its worker.json).");
      return;
    }
    const params = new URLSearchParams();
    for (const name of ["since", "until"]) {
      const value = form.elements[name].value.trim();
      if (value) params.set(name, value);
    }
    say("Drawing the map…", "loading");
    let response;
    try {
      response = await fetch("svg/?" + params, {
        headers: { Authorization: "Bearer " + token },
        cache: "no-store",
      });
    } catch (error) {
      say("The worker did not answer: " + error, "error");
      return;
    }
    const body = await response.text();
    if (!response.ok) {
      let reason = body;
      try { reason = JSON.parse(body).error; } catch (ignored) { /* not JSON: show it as it is */ }
      const text = "The worker answered " + response.status + ": " + reason;
      if (response.status === 401) askForToken(text); else say(text, "error");
      return;
    }
    const svg = new DOMParser().parseFromString(body, "image/svg+xml").documentElement;
    if (svg.nodeName !== "svg") {
      say("The worker's answer is not an SVG drawing.", "error");
      return;
    }
    map.replaceChildren(document.importNode(svg, true));
    const shown = params.toString();
    history.replaceState(null, "", location.pathname + (shown ? "?" + shown : ""));
    say("", "drawn");
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    draw();
  });
  draw();
})();
