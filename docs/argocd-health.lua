-- Argo CD health check for rlhf.dev/RLHFJob.
-- Install under resource.customizations.health.rlhf.dev_RLHFJob in argocd-cm (docs/gitops.md).
-- Argo CD passes the live object as the global `obj` and expects {status=..., message=...}.
local hs = {}

local function condition(status, ctype)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function describe(status, fallback)
  local parts = {}
  if status.reason ~= nil and status.reason ~= "" then
    table.insert(parts, status.reason)
  end
  if status.message ~= nil and status.message ~= "" then
    table.insert(parts, status.message)
  end
  if #parts == 0 then
    return fallback
  end
  return table.concat(parts, ": ")
end

local status = obj.status
if status == nil or status.phase == nil or status.phase == "" then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to pick up the job"
  return hs
end

local phase = status.phase
if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = describe(status, "Training finished")
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = describe(status, "Job failed")
elseif phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = describe(status, "Job is suspended")
elseif phase == "Running" then
  local stalled = condition(status, "Stalled")
  if stalled ~= nil and stalled.status == "True" then
    hs.status = "Degraded"
    local detail = stalled.message
    if detail == nil or detail == "" then
      detail = stalled.reason
    end
    if detail ~= nil and detail ~= "" then
      hs.message = "Job is stalled: " .. detail
    else
      hs.message = "Job is stalled"
    end
  else
    hs.status = "Progressing"
    hs.message = describe(status, "Running")
  end
elseif phase == "Pending" or phase == "Provisioning" or phase == "Retrying" then
  hs.status = "Progressing"
  hs.message = describe(status, phase)
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase)
end
return hs
