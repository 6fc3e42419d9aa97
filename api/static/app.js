// Hash router tying the views together: #/ (jobs + form), #/jobs/<id>, #/compare,
// #/schedules (list + form; ?from=<job id> prefills it), #/schedules/<id> (runs, versions).
import { getApiKey, setApiKey } from "./api.js";
import { CompareView } from "./compare.js";
import { JobView } from "./jobview.js";
import { JobsView } from "./jobs.js";
import { SchedulesView } from "./schedules.js";

const banner = document.getElementById("banner");
let bannerTimer = null;
function showError(message, kind = "error") {
  banner.textContent = message;
  banner.className = `banner ${kind === "info" ? "info" : ""}`;
  clearTimeout(bannerTimer);
  bannerTimer = setTimeout(() => banner.classList.add("hidden"), 8000);
}

const selected = new Set(); // jobs ticked for comparison, shared by the list and compare views
const views = {
  jobs: new JobsView(showError, selected),
  job: new JobView(showError),
  compare: new CompareView(showError, selected),
};
views.schedules = new SchedulesView(showError, () => views.jobs.loadChoices());

function route() {
  const hash = location.hash || "#/";
  let name = "jobs", arg = null;
  let m;
  if ((m = hash.match(/^#\/jobs\/([^/?]+)/))) { name = "job"; arg = decodeURIComponent(m[1]); }
  else if ((m = hash.match(/^#\/compare(?:\?ids=(.*))?/))) {
    name = "compare";
    arg = m[1] ? decodeURIComponent(m[1]).split(",").filter(Boolean) : [];
  } else if ((m = hash.match(/^#\/schedules(?:\/([^/?]+))?(?:\?from=([^&]+))?/))) {
    name = "schedules";
    arg = { id: m[1] ? decodeURIComponent(m[1]) : null, from: m[2] ? decodeURIComponent(m[2]) : null };
  }
  for (const [k, v] of Object.entries(views)) {
    document.getElementById(`view-${k}`).classList.toggle("hidden", k !== name);
    if (k !== name) v.hide();
  }
  document.querySelectorAll("[data-nav]").forEach((a) =>
    a.classList.toggle("active", a.dataset.nav === (name === "job" ? "jobs" : name)));
  views[name].show(arg);
}

document.getElementById("compare-selected").addEventListener("click", () => {
  location.hash = `#/compare?ids=${[...selected].join(",")}`;
});

const keyInput = document.getElementById("api-key");
keyInput.value = getApiKey();
document.getElementById("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  setApiKey(keyInput.value.trim());
  showError(keyInput.value.trim() ? "API key saved in this browser" : "API key cleared", "info");
  route();
});

// Read-only handle for debugging in the console and for the browser test's waits.
window.__vtrans = { views };

window.addEventListener("hashchange", route);
route();
