// SPDX-License-Identifier: UNLICENSED
pragma solidity 0.8.37;

interface IERC20DepositFrom {
    function transferFrom(address from, address to, uint256 value) external returns (bool);
}

/// @title Where buyers pay $FAR into their prepaid balance.
/// @notice `deposit(amount)` moves `amount` of the token from the caller to the treasury and emits one
/// `Deposited(wallet, amount)` naming the caller: the ledger credits exactly that wallet, once per event, when
/// the event is deep enough (docs/deposits.md). The caller approves this contract on the token first. The
/// contract holds no tokens and no state besides its two immutable addresses; a plain transfer to the treasury
/// is not a deposit (it names no buyer intent), and this contract cannot be made to emit an event for money
/// that did not move, since the event follows a transferFrom that succeeded.
contract FarDeposit {
    IERC20DepositFrom public immutable token;
    address public immutable treasury;

    event Deposited(address indexed wallet, uint256 amount);

    error ZeroAddress();
    error ZeroAmount();
    error TransferFailed();

    constructor(IERC20DepositFrom token_, address treasury_) {
        if (address(token_) == address(0) || treasury_ == address(0)) revert ZeroAddress();
        token = token_;
        treasury = treasury_;
    }

    function deposit(uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        if (!token.transferFrom(msg.sender, treasury, amount)) revert TransferFailed();
        emit Deposited(msg.sender, amount);
    }
}
