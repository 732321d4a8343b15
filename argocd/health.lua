-- Argo CD health check for finetune.dev/FineTuneJob.
--
-- Install it under resource.customizations.health.finetune.dev_FineTuneJob in argocd-cm
-- (see docs/gitops.md). Argo CD runs it with gopher-lua (Lua 5.1): keep to 5.1 features.
--
--   Succeeded                                 -> Healthy
--   Failed                                    -> Degraded (message from the Failed condition)
--   Pending / Created / Running / Restarting  -> Progressing (with training progress if known)
--   Suspended                                 -> Suspended
--   no status yet, or a spec change not yet
--   observed (observedGeneration < generation) -> Progressing
--   any other phase                           -> Unknown

local PROGRESSING = { Pending = true, Created = true, Running = true, Restarting = true }

-- The condition of that type, preferring one with status "True".
local function condition(status, ctype)
  if type(status.conditions) ~= "table" then
    return nil
  end
  local found = nil
  for _, c in ipairs(status.conditions) do
    if type(c) == "table" and c.type == ctype then
      if c.status == "True" then
        return c
      end
      found = found or c
    end
  end
  return found
end

-- "reason: message" from a condition, the parts that are present.
local function describe(c)
  if c == nil then
    return nil
  end
  local reason = c.reason
  local message = c.message
  if reason ~= nil and reason ~= "" and message ~= nil and message ~= "" then
    return tostring(reason) .. ": " .. tostring(message)
  end
  if message ~= nil and message ~= "" then
    return tostring(message)
  end
  if reason ~= nil and reason ~= "" then
    return tostring(reason)
  end
  return nil
end

local function whole(n)
  return tostring(math.floor(n + 0.5))
end

-- "step 120/1000 (12.0%), loss 1.234, ETA 5m3s" from status.progress, or nil.
local function progress_text(p)
  if type(p) ~= "table" then
    return nil
  end
  local parts = {}
  if type(p.step) == "number" then
    local step = "step " .. whole(p.step)
    if type(p.totalSteps) == "number" and p.totalSteps > 0 then
      step = step .. "/" .. whole(p.totalSteps)
    end
    if type(p.percent) == "number" then
      step = step .. " (" .. string.format("%.1f", p.percent) .. "%)"
    end
    table.insert(parts, step)
  end
  if type(p.loss) == "number" then
    table.insert(parts, "loss " .. string.format("%.4g", p.loss))
  end
  if type(p.eta) == "string" and p.eta ~= "" then
    table.insert(parts, "ETA " .. p.eta)
  end
  if #parts == 0 then
    return nil
  end
  return table.concat(parts, ", ")
end

local function join(head, tail)
  if tail == nil then
    return head
  end
  return head .. ": " .. tail
end

local function health(o)
  local status = o.status
  if type(status) ~= "table" or status.phase == nil then
    return { status = "Progressing", message = "Waiting for the operator to pick up the job" }
  end

  local generation = o.metadata and o.metadata.generation
  local observed = status.observedGeneration
  if type(generation) == "number" and type(observed) == "number" and observed < generation then
    return {
      status = "Progressing",
      message = "Waiting for the operator to observe generation " .. whole(generation)
        .. " (observed " .. whole(observed) .. ")",
    }
  end

  local phase = tostring(status.phase)
  if phase == "Succeeded" then
    return { status = "Healthy", message = describe(condition(status, "Succeeded")) or "Succeeded" }
  end
  if phase == "Failed" then
    return { status = "Degraded", message = describe(condition(status, "Failed")) or "Failed" }
  end
  if phase == "Suspended" then
    return { status = "Suspended", message = describe(condition(status, "Suspended")) or "Suspended" }
  end
  if PROGRESSING[phase] then
    local detail = progress_text(status.progress) or describe(condition(status, phase))
    if phase == "Restarting" and type(status.attempt) == "number" then
      detail = join("attempt " .. whole(status.attempt), detail)
    end
    return { status = "Progressing", message = join(phase, detail) }
  end
  return { status = "Unknown", message = "Unrecognised phase " .. phase }
end

return health(obj)
