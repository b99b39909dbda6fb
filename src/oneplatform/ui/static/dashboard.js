// OnePlatform dashboard: keep each page's live part current without reloading the page.
// An element with data-live="URL" gets its contents replaced by the HTML fragment at URL
// every two seconds; a lost session sends the browser to the login page.
"use strict";

const EVERY_MS = 2000;

async function refresh(element) {
  let response;
  try {
    response = await fetch(element.dataset.live, { credentials: "same-origin", cache: "no-store" });
  } catch (_offline) {
    return; // the platform is restarting: try again on the next tick
  }
  if (response.status === 401) {
    window.location.assign("/ui/login");
    return;
  }
  if (response.ok) {
    element.innerHTML = await response.text();
    element.dataset.refreshed = String(Number(element.dataset.refreshed || 0) + 1);
  }
}

function start() {
  for (const element of document.querySelectorAll("[data-live]")) {
    const tick = async () => {
      if (!document.hidden) await refresh(element);
      window.setTimeout(tick, EVERY_MS);
    };
    window.setTimeout(tick, EVERY_MS);
  }
}

document.addEventListener("DOMContentLoaded", start);
