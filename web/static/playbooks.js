/* Playbooks page: "Run now" (press twice) starts a playbook and opens its job; schedule on/off. */
(function () {
  "use strict";
  const ET = window.EasyTask;

  /* The job id in an answer: `{"job": {...}}` from a playbook run, `{"job": 7}` from a schedule. */
  function jobId(data) {
    const job = data && data.job;
    return job !== null && typeof job === "object" ? job.id : job;
  }

  function armRun(button) {
    const label = button.textContent;
    let armed = null;

    function disarm() {
      armed = null;
      button.textContent = label;
      button.classList.replace("danger", "primary");
    }

    button.addEventListener("click", async function () {
      if (!armed) {
        button.textContent = "Confirm: run now";
        button.classList.replace("primary", "danger");
        armed = setTimeout(disarm, 4000);
        return;
      }
      clearTimeout(armed);
      disarm();
      button.disabled = true;
      button.textContent = "Starting…";
      try {
        const data = await ET.api("POST", button.dataset.runUrl);
        window.location.assign("/jobs/" + encodeURIComponent(jobId(data)));
      } catch (err) {
        button.disabled = false;
        button.textContent = label;
        ET.alertText(button.parentElement, err.message);
      }
    });
  }

  function toggle(button) {
    button.addEventListener("click", async function () {
      button.disabled = true;
      try {
        await ET.api("POST", button.dataset.toggleUrl);
        window.location.reload();
      } catch (err) {
        button.disabled = false;
        ET.alertText(button.parentElement, err.message);
      }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("#playbooks button[data-run-url]").forEach(armRun);
    document.querySelectorAll("#playbooks button[data-toggle-url]").forEach(toggle);
  });
})();
