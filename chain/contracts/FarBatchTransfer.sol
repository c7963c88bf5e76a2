// SPDX-License-Identifier: UNLICENSED
pragma solidity 0.8.37;

interface IERC20TransferFrom {
    function transferFrom(address from, address to, uint256 value) external returns (bool);
}

/// @title Pays many wallets in one transaction.
/// @notice Moves `amounts[i]` of `token` from the caller to `recipients[i]` for every i, or nothing at all: any
/// failed transfer reverts the whole batch. The caller (the treasury) approves this contract on the token
/// once; the contract holds no tokens and no state, and can only spend what its caller allowed it to.
/// One transaction per batch pays the 21,000 gas base cost and the cold token account once, not once per wallet.
contract FarBatchTransfer {
    error LengthMismatch(uint256 recipients, uint256 amounts);
    error TransferFailed(uint256 index);

    function payBatch(IERC20TransferFrom token, address[] calldata recipients, uint256[] calldata amounts) external {
        uint256 count = recipients.length;
        if (count != amounts.length) revert LengthMismatch(count, amounts.length);
        for (uint256 i; i < count; ) {
            if (!token.transferFrom(msg.sender, recipients[i], amounts[i])) revert TransferFailed(i);
            unchecked {
                ++i;
            }
        }
    }
}
