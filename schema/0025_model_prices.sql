-- Prices that follow scarcity (#30, docs/pricing.md): the history of each model's prices as the pricer
-- (accounting.pricer) set them. The current price lives in Redis (prices:live); a row is written here each time
-- it changes (and the first time a model is priced), so the rows are the steps of the price, not samples of it.
-- The multiplier is over the catalogue prices in force when it was set, which are recorded beside it.
-- What a session paid is not read from here: its prices are on its own row (far_mesh_sessions), fixed at
-- admission.

CREATE TABLE far_model_prices (
    model_id                       TEXT           NOT NULL,
    priced_at                      TIMESTAMPTZ    NOT NULL,
    multiplier                     NUMERIC(12, 4) NOT NULL CHECK (multiplier > 0),
    prompt_price_per_token_far     NUMERIC(38, 18) NOT NULL CHECK (prompt_price_per_token_far >= 0),
    completion_price_per_token_far NUMERIC(38, 18) NOT NULL CHECK (completion_price_per_token_far >= 0),
    catalogue_prompt_price_far     NUMERIC(38, 18) NOT NULL CHECK (catalogue_prompt_price_far >= 0),
    catalogue_completion_price_far NUMERIC(38, 18) NOT NULL CHECK (catalogue_completion_price_far >= 0),
    queue_depth                    INTEGER        NOT NULL CHECK (queue_depth >= 0),
    thinnest_block_servers         INTEGER        NOT NULL CHECK (thinnest_block_servers >= 0),
    PRIMARY KEY (model_id, priced_at)
);
